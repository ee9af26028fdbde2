"""The site server (issue 20): the HTTP face of a site, served by ``costor serve``.

``app.py`` builds the FastAPI application (the Admin API under ``/api/v1``, ``/healthz``,
``/metrics``), ``auth.py`` checks bearer tokens, ``errors.py`` maps the one error tree
to HTTP statuses, ``metrics.py`` is the Prometheus collector, ``listen.py`` runs uvicorn
beside the scheduler, ``openapi.py`` prints the OpenAPI contract (docs/openapi.json).
A route parses, calls one use case in :mod:`costor.ops` and returns its ``to_json()``
document: the same document the CLI prints with ``--json``. Only this package imports
FastAPI, Starlette and uvicorn (an import-linter contract).
"""
