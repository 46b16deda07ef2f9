"""Model backends. Each backend module knows one model family; the rest of the toolkit talks
to `aqa.models.load_backend` and the interface in `aqa.models.base`."""
