"""An arq worker that claims and finishes jobs in batches, keeping arq's own semantics.

:mod:`~pipeline.worker.batch.claiming` (:class:`BatchWorker`), :mod:`~pipeline.worker.batch.runs`
(one claimed job's run, rule for rule as arq's ``Worker.run_job``) and
:mod:`~pipeline.worker.batch.scripts` (the two Redis scripts, on arq's key layout). It knows no
write kind: arq's own test suite runs against it (``tests/arq_suite``).
"""
