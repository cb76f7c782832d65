"""Where requests run. Each backend implements ``base.Backend``; a protocol is one module.

- ``local``: transformers + torch in this process (``loading`` loads the models, the engine caches them).
- ``studio``: the studio's multipart protocol (our reference server), over ``client`` and ``transport``.

Modules are imported where they are used: ``import inference`` loads neither torch nor httpx's machinery.
"""
