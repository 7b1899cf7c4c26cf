"""Reference workers that the pipeline is measured against (``pipeline bench``).

The production worker is ``pipeline.WorkerSettings``; nothing here is imported by it.
"""
