"""The web side of newsletter: the FastAPI app behind ``newsletter serve`` (see :mod:`newsletter.web.app`)."""
