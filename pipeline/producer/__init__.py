"""The producer side: what a service that enqueues writes imports.

:mod:`~pipeline.producer.client` (``create_pool``, :class:`PipelineClient`, :class:`Receipt`),
:mod:`~pipeline.producer.coalescing` (:class:`CoalescingClient`: many single-item calls become a
few multi-item jobs), :mod:`~pipeline.producer.enqueue` (enqueueing that rides through a Redis
restart) and :mod:`~pipeline.producer.json_schema` (the payloads as JSON Schema, for producers
that cannot import the models). Nothing here imports the worker.
"""
