"""Clients, futures, and waiting on futures."""

from distributary.client.client import Client, default_client, get_client
from distributary.client.future import Future
from distributary.client.structures import futures_of
from distributary.client.waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    fire_and_forget,
    wait,
)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Client",
    "Future",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "wait",
]
