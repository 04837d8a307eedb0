"""The default pool as a Ray Serve application, for Serve's own tools (run from the repository root).

    serve run serve_app:app                                   # the default pool, real time
    serve run serve_app:build time_scale=5 models=mistral-7b-instruct,wizardlm-13b
    serve deploy configs/serve_twin.yaml                      # through a Serve config (sysaware.serving.app:build)

``sysaware serve`` does the same from the package's CLI and prints the URLs. API keys come from
``$SYSAWARE_API_KEYS`` (or ``api_key_file=...`` with ``build``); without any, authentication is off.
"""

from sysaware.serving.app import AppArgs, build, build_app

app = build(AppArgs())

__all__ = ["AppArgs", "app", "build"]
