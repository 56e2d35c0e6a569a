"""The only code in vox_flow that touches Celery's or kombu's internals.

Each assumption lives in one module here, with a unit test and a version gate
(``versions.check_transport``, called when an app is created):

* ``capture``: a message built exactly as ``apply_async`` builds it, and the one Redis command
  kombu would run to send it, taken from kombu's publish-batch hook (kombu >= 5.7) unsent;
* ``layout``: where kombu's Redis transport keeps queues and reserved messages, read from a
  live channel (so ``broker_transport_options`` such as ``global_keyprefix`` are honoured);
* ``delivered``: what a worker's consumer holds (kombu's ``QoS._delivered``);
* ``request``: Celery's worker ``Request``, told when a run is lost to a dead child or a hard
  time limit;
* ``transport``: kombu's Redis transport with an atomic fetch (pop and reserve in one step),
  per-queue bells, fresh delivery tags and acknowledgements retried across a broker blip;
* ``backend``: Celery's Redis result backend, writing a run's buffered attempt records with
  its result;
* ``liveness``: a solo worker's buffered task events and its heartbeats, sent from the keeper
  thread while a run blocks the worker's event loop (so Flower sees the run live).
"""
