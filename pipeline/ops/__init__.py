"""Operating the pipeline: what people and monitoring read and act on.

The dead-letter store (:mod:`~pipeline.ops.dead_letters`), ``pipeline status``
(:mod:`~pipeline.ops.status`), metrics (:mod:`~pipeline.ops.metrics` of the worker,
:mod:`~pipeline.ops.queue_metrics` of the queue), the HTTP endpoint and its page
(:mod:`~pipeline.ops.endpoint`, :mod:`~pipeline.ops.web`), readiness
(:mod:`~pipeline.ops.readiness`), pausing a queue (:mod:`~pipeline.ops.pause`) and the queue's
jobs one by one (:mod:`~pipeline.ops.queue_jobs`).
"""
