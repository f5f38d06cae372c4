"""The composition root: the ``binbaton`` command line (one module per command), its flags
(generated from the config dataclasses), the supervisor of ``binbaton up`` and the demo."""
