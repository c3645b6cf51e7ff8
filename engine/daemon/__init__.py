"""The background process: socket transport, request handlers, the event log, the job store, the GPU worker.

Its start-up imports no torch (the socket answers within a second); the worker thread loads the models.
"""
