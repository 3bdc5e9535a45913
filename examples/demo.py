"""A short tour: a LocalCluster with worker processes computing something real."""

from __future__ import annotations

import random
import time

from distributary import Client, LocalCluster, as_completed, wait


def estimate_pi(seed: int, samples: int = 200_000) -> float:
    """Monte-Carlo estimate of pi from one chunk of random points."""
    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(samples))
    return 4.0 * inside / samples


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def add(a: int, b: int) -> int:
    return a + b


def main() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        print(cluster)
        start = time.perf_counter()
        chunks = client.map(estimate_pi, range(16))
        pi = client.submit(mean, chunks)
        print(f"pi is about {pi.result():.4f} (16 chunks on {len(cluster.workers)} workers)")

        leaves = client.map(add, range(512), range(512))
        while len(leaves) > 1:
            leaves = [client.submit(add, a, b) for a, b in zip(leaves[::2], leaves[1::2])]
        total = leaves[0].result()
        print(f"tree reduction of 1023 tasks: {total} (expected {2 * sum(range(512))})")

        squares = client.map(lambda x: x * x, range(10))
        wait(squares)
        firsts = [f.result() for f in as_completed(squares)]
        print(f"squares as they completed: {sorted(firsts)}")

        try:
            client.submit(lambda: 1 / 0).result()
        except ZeroDivisionError as exc:
            print(f"a remote error comes back as itself: {exc!r}")
        print(f"done in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
