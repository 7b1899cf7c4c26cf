"""The worker: arq job functions that hand rows to the coalescer, which writes many jobs' rows as
one transaction.

:mod:`~pipeline.worker.service` builds it (``arq pipeline.WorkerSettings``, ``pipeline worker``);
:mod:`~pipeline.worker.jobs` turns each job into rows and each outcome into what arq does next;
:mod:`~pipeline.worker.coalescer` batches and flushes; :mod:`~pipeline.worker.gate` waits out a
database outage; :mod:`~pipeline.worker.retries` times hand-backs; :mod:`~pipeline.worker.outcomes`
settles each job's receipt; :mod:`~pipeline.kinds.atomic` and
:mod:`~pipeline.worker.undeliverable` are the two reserved functions. :mod:`pipeline.worker.batch`
is the arq-compatible batch-claiming worker that both worker commands run.
"""
