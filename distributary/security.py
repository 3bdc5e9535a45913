"""Security: the TLS credentials and settings of a cluster's connections.

A :class:`Security` holds, for each role (``scheduler``, ``worker`` — nannies too — and
``client``), a certificate and its key, and the certificate authority (CA) whose
signature every peer's certificate must bear.  Each value is a path to a PEM file, or
PEM text itself (as :meth:`Security.temporary` makes them, in memory only).  What is not
given is read from the configuration (``distributed.comm.tls.*`` and
``distributed.comm.require-encryption``), as dask.distributed does.

Connections are mutually authenticated: both ends present a certificate, and each end
refuses a peer whose certificate the CA did not sign, during the TLS handshake, before
anything else is read.  Host names are not checked: the certificates name roles, not
machines.  With ``require_encryption`` a node refuses to listen, and every process
refuses to connect, without TLS (in-process connections aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import dask.config

__all__ = ["ROLES", "Security", "as_security", "client_security"]

ROLES = ("scheduler", "worker", "client")
_VERSIONS = {1.2: ssl.TLSVersion.TLSv1_2, 1.3: ssl.TLSVersion.TLSv1_3}
_FILES = tuple(f"tls_{role}_{part}" for role in ROLES for part in ("cert", "key"))
_FIELDS = (
    "require_encryption",
    "tls_ca_file",
    "tls_ciphers",
    "tls_min_version",
    "tls_max_version",
    *_FILES,
    "extra_conn_args",
)
_PEM_MARK = "-----BEGIN"
# Whether files can live in memory (and be opened by path): Linux's memfd
_MEMORY_FILES = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
# What extra_conn_args may pass on to the event loop's create_connection (the comm layer
# sets the rest: the address, the protocol and the TLS context).
_SET_BY_COMM = {"self", "protocol_factory", "host", "port", "ssl", "sock", "server_hostname"}


class Security:
    """TLS settings and credentials for a cluster's connections.

    ``Security(tls_ca_file=..., tls_scheduler_cert=..., tls_scheduler_key=..., ...)``:
    each credential is a path to a PEM file (a key may also be appended to its
    certificate's file, and its own parameter left out) or PEM text.  ``tls_ciphers`` is
    an OpenSSL cipher string; ``tls_min_version`` and ``tls_max_version`` are
    ``ssl.TLSVersion.TLSv1_2`` or ``TLSv1_3`` (or ``1.2``, ``1.3``; the minimum is TLS 1.2).
    ``require_encryption`` (by default ``distributed.comm.require-encryption``, else
    whether any TLS parameter is given) refuses connections without TLS.
    ``extra_conn_args`` are more keyword arguments for the event loop's
    ``create_connection`` (``local_addr``, ...).  Missing values come from the
    ``distributed.comm.tls.*`` configuration.
    """

    __slots__ = (*_FIELDS, "_contexts")

    def __init__(
        self,
        require_encryption: bool | None = None,
        *,
        tls_ca_file: str | None = None,
        tls_ciphers: str | None = None,
        tls_min_version: Any = None,
        tls_max_version: Any = None,
        tls_client_key: str | None = None,
        tls_client_cert: str | None = None,
        tls_scheduler_key: str | None = None,
        tls_scheduler_cert: str | None = None,
        tls_worker_key: str | None = None,
        tls_worker_cert: str | None = None,
        extra_conn_args: Mapping[str, Any] | None = None,
    ):
        given = {name: value for name, value in locals().items() if name in _FIELDS}
        tls_given = any(
            value is not None
            for name, value in given.items()
            if name not in ("require_encryption", "extra_conn_args")
        )
        config = dask.config.get
        self.tls_ca_file = _credential("tls_ca_file", tls_ca_file, "ca-file")
        self.tls_ciphers = tls_ciphers or config("distributed.comm.tls.ciphers", default=None)
        for role in ROLES:
            for part in ("cert", "key"):
                name = f"tls_{role}_{part}"
                setattr(self, name, _credential(name, given[name], f"{role}.{part}"))
        self.tls_min_version = _version(
            "tls_min_version", tls_min_version, "min-version", ssl.TLSVersion.TLSv1_2
        )
        self.tls_max_version = _version("tls_max_version", tls_max_version, "max-version", None)
        if require_encryption is None:
            require_encryption = config("distributed.comm.require-encryption", default=None)
        if require_encryption is None:
            require_encryption = tls_given
        if not isinstance(require_encryption, bool):
            raise TypeError(f"require_encryption must be True or False, not {require_encryption!r}")
        self.require_encryption = require_encryption
        self.extra_conn_args = _connection_args(extra_conn_args)
        self._contexts: dict[tuple[str, bool], ssl.SSLContext | None] = {}

    @classmethod
    def temporary(cls, **kwargs: Any) -> Security:
        """A Security with new credentials, made in memory for this cluster alone: a
        throw-away CA signs one certificate that every role uses, and its key is then
        forgotten.  ``kwargs`` are other parameters (``tls_min_version``, ...)."""
        from distributary.utils.certificates import new_authority

        authority = new_authority()
        credentials = authority.issue()
        files = {
            name: credentials.key if name.endswith("key") else credentials.cert for name in _FILES
        }
        kwargs.setdefault("require_encryption", True)
        return cls(tls_ca_file=authority.cert, **files, **kwargs)

    # ------------------------------------------------------------------ for connections

    def get_tls_config_for_role(self, role: str) -> dict[str, Any]:
        """The TLS settings of ``role`` (scheduler, worker or client): ``ca_file``,
        ``ciphers``, ``cert`` and ``key``."""
        _check_role(role)
        return {
            "ca_file": self.tls_ca_file,
            "ciphers": self.tls_ciphers,
            "cert": getattr(self, f"tls_{role}_cert"),
            "key": getattr(self, f"tls_{role}_key"),
        }

    def get_connection_args(self, role: str) -> dict[str, Any]:
        """What ``connect`` needs to open connections as ``role``: ``ssl_context``
        (None without TLS credentials), ``require_encryption``, ``extra_conn_args``."""
        return {
            "ssl_context": self._context(role, server_side=False),
            "require_encryption": self.require_encryption,
            "extra_conn_args": dict(self.extra_conn_args),
        }

    def get_listen_args(self, role: str) -> dict[str, Any]:
        """What ``listen`` needs to accept connections as ``role``: ``ssl_context``
        (None without a certificate for the role) and ``require_encryption``."""
        return {
            "ssl_context": self._context(role, server_side=True),
            "require_encryption": self.require_encryption,
        }

    def _context(self, role: str, server_side: bool) -> ssl.SSLContext | None:
        key = (role, server_side)
        if key not in self._contexts:
            self._contexts[key] = self._new_context(role, server_side)
        return self._contexts[key]

    def _new_context(self, role: str, server_side: bool) -> ssl.SSLContext | None:
        tls = self.get_tls_config_for_role(role)
        if server_side and not tls["cert"]:
            return None  # (listening on tls:// then says what is missing)
        if not tls["ca_file"]:
            if tls["cert"]:
                raise ValueError(
                    f"tls_{role}_cert is given but not tls_ca_file: the certificate of the "
                    "authority that signs the peers' certificates is needed to check them"
                )
            return None
        protocol = ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
        ctx = ssl.SSLContext(protocol)
        ctx.check_hostname = False  # (certificates name roles, not hosts)
        ctx.verify_mode = ssl.CERT_REQUIRED  # both ends: mutual authentication
        ctx.minimum_version = self.tls_min_version
        if self.tls_max_version is not None:
            ctx.maximum_version = self.tls_max_version
        try:
            if _is_pem(tls["ca_file"]):
                ctx.load_verify_locations(cadata=tls["ca_file"])
            else:
                ctx.load_verify_locations(cafile=tls["ca_file"])
        except ssl.SSLError as err:
            raise ValueError(
                f"tls_ca_file {_show(tls['ca_file'])} holds no CA certificate: {err}"
            ) from None
        if tls["cert"]:
            with _as_files(tls["cert"], tls["key"]) as (cert, key):
                try:
                    ctx.load_cert_chain(cert, key)
                except ssl.SSLError as err:
                    raise ValueError(
                        f"Could not load tls_{role}_cert {_show(tls['cert'])} with tls_{role}_key "
                        f"{_show(tls['key'])} (a PEM certificate and its private key): {err}"
                    ) from None
        if tls["ciphers"]:
            try:
                ctx.set_ciphers(tls["ciphers"])
            except ssl.SSLError as err:
                raise ValueError(
                    f"tls_ciphers={tls['ciphers']!r} selects no cipher: {err}"
                ) from None
        return ctx

    def _as_client_for(self, role: str) -> Security:
        """This Security with ``role``'s credentials as the client's (for a client that
        runs inside a worker, which has no client certificate of its own)."""
        _check_role(role)
        copy = self._copy()
        copy.tls_client_cert = getattr(self, f"tls_{role}_cert")
        copy.tls_client_key = getattr(self, f"tls_{role}_key")
        return copy

    # ------------------------------------------------------------------ as a value

    def _copy(self) -> Security:
        copy = object.__new__(Security)
        copy.__setstate__(self.__getstate__())
        return copy

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}  # (not the SSL contexts)

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in _FIELDS:
            setattr(self, name, state[name])
        self._contexts = {}

    def __repr__(self) -> str:
        shown = [f"require_encryption={self.require_encryption}"]
        for name in _FIELDS[1:]:
            value = getattr(self, name)
            if value is None or (name == "extra_conn_args" and not value):
                continue
            if isinstance(value, ssl.TLSVersion):
                text = value.name
            elif name in _FILES or name == "tls_ca_file":
                text = _show(value)
            else:
                text = repr(value)
            shown.append(f"{name}={text}")
        return f"Security({', '.join(shown)})"


def as_security(security: Any, owner: str, temporary: bool = False) -> Security:
    """The Security that ``security=`` asks for: from the configuration when None, made
    from a dict of parameters, or (where ``temporary``) new credentials when True."""
    if security is None or security is False:
        return Security()
    if isinstance(security, Security):
        return security
    if security is True and temporary:
        return Security.temporary()
    if isinstance(security, Mapping):
        return Security(**security)
    allowed = "a Security, a dict of its parameters" + (", True" if temporary else "")
    raise TypeError(f"{owner}(security=...) must be {allowed} or None, not {security!r}")


def client_security(
    security: Any, address: Any, scheduler_file: Any, cluster_kwargs: dict
) -> Security:
    """A Client's Security: the one given (True: temporary credentials), else its
    cluster's (``Client(cluster)``), else the configuration's.  A LocalCluster that the
    client starts (given neither ``address`` nor ``scheduler_file``) gets it in
    ``cluster_kwargs`` too."""
    if security is None:
        security = getattr(address, "security", None)
    given = security is not None
    security = as_security(security, "Client", temporary=True)
    if given and address is None and scheduler_file is None:
        cluster_kwargs.setdefault("security", security)
    return security


# ---------------------------------------------------------------------- validation


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"Unknown role {role!r}: expected one of {', '.join(ROLES)}")


def _is_pem(value: str) -> bool:
    return _PEM_MARK in value


def _show(value: str | None) -> str:
    """A credential for messages and repr: its path, never the text of a key."""
    if value is None:
        return "None"
    return "<PEM in memory>" if _is_pem(value) else repr(value)


def _credential(name: str, value: Any, config_key: str) -> str | None:
    """A path to an existing file, or PEM text; from the configuration if not given."""
    if value is None:
        value = dask.config.get(f"distributed.comm.tls.{config_key}", default=None)
        name = f"distributed.comm.tls.{config_key}"
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a path or PEM text, not {type(value).__name__}")
    if not _is_pem(value):
        value = os.path.abspath(os.path.expanduser(value))
        if not os.path.isfile(value):
            raise FileNotFoundError(errno.ENOENT, f"{name}: no such file", value)
    return value


def _version(name: str, value: Any, config_key: str, default: Any) -> ssl.TLSVersion | None:
    if value is None:
        value = dask.config.get(f"distributed.comm.tls.{config_key}", default=None)
    if value is None:
        return default
    if isinstance(value, ssl.TLSVersion) and value in _VERSIONS.values():
        return value
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            if float(value) in _VERSIONS:
                return _VERSIONS[float(value)]
    raise ValueError(
        f"{name}={value!r} is not supported: expected ssl.TLSVersion.TLSv1_2 or TLSv1_3 "
        "(1.2 or 1.3), or None"
    )


def _connection_args(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"extra_conn_args must be a mapping, not {type(value).__name__}")
    parameters = inspect.signature(asyncio.AbstractEventLoop.create_connection).parameters
    accepted = set(parameters) - _SET_BY_COMM
    unknown = sorted(set(value) - accepted)
    if unknown:
        raise TypeError(
            f"extra_conn_args {unknown} are not arguments of the event loop's "
            f"create_connection (those are {sorted(accepted)})"
        )
    return dict(value)


@contextlib.contextmanager
def _as_files(
    cert: str, key: str | None, in_memory: bool = _MEMORY_FILES
) -> Iterator[tuple[str, str | None]]:
    """Paths the ssl module can load ``cert`` and ``key`` from: their own, or for PEM
    text a file that lives in memory (``in_memory``: Linux) or else a private temporary
    file, removed at once."""
    if not _is_pem(cert) and (key is None or not _is_pem(key)):
        yield cert, key
        return
    data = "\n".join(_text(value) for value in (cert, key) if value is not None).encode()
    if in_memory:
        fd = os.memfd_create("distributary-tls", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "wb") as f:
                f.write(data)
            yield f"/proc/self/fd/{fd}", None
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="distributary-tls-") as directory:
        path = os.path.join(directory, "credentials.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path, None


def _text(credential: str) -> str:
    if _is_pem(credential):
        return credential
    with open(credential) as f:
        return f.read()
