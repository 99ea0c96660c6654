"""WSGI entry point: the stock label-studio-ml app serving `NewModel` on port 9090.

Run it as `label-studio-ml start ./my_ml_backend` (which executes this file),
`python my_ml_backend/_wsgi.py --port 9090`, or under gunicorn:
`gunicorn --bind 0.0.0.0:9090 my_ml_backend._wsgi:app`. The settings are read here, once, and
passed down: to the views, the status page and every model the registry builds.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # executed as a script by `label-studio-ml start`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from my_ml_backend.server.launcher import ensure_dependencies  # standard library only

    ensure_dependencies(Path(__file__).resolve().parent.parent, __file__)  # a venv or a hint, not a traceback

from label_studio_ml.api import init_app  # noqa: E402

from my_ml_backend.llm.client import shared_client  # noqa: E402
from my_ml_backend.llm.quota import DayClock  # noqa: E402
from my_ml_backend.model import NewModel  # noqa: E402
from my_ml_backend.server.guards import server_options, warn_if_exposed  # noqa: E402
from my_ml_backend.server.launcher import follow_launcher  # noqa: E402
from my_ml_backend.server.routes import install  # noqa: E402
from my_ml_backend.settings import load_env_file, load_settings, reveal  # noqa: E402
from my_ml_backend.telemetry.logs import configure_logging  # noqa: E402

load_env_file()
try:
    settings = load_settings()
    DayClock(settings.quota_reset)  # its format and time zone checked now, not in the first /predict
except ValueError as exc:  # a wrong setting: its message, not a traceback
    sys.exit(f"配置错误 (configuration error): {exc}")
configure_logging(settings)
logger = logging.getLogger("my_ml_backend")


def create_app():  # noqa: ANN201 - a Flask app
    """The stock app with our views installed; data (not code) goes to DATA_DIR."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    NewModel.settings = settings  # before any model is built
    app = init_app(model_class=NewModel, model_dir=str(settings.data_dir))
    basic_auth = None
    if settings.basic_auth_user and settings.basic_auth_pass:
        basic_auth = (settings.basic_auth_user, reveal(settings.basic_auth_pass))
        logger.info("已启用基本认证 (basic auth enabled) for user %s", settings.basic_auth_user)
    install(app, NewModel, basic_auth, settings)
    shared_client(settings)  # now, not in the first /setup: SSL and httpx set-up take 0.2-0.6 s of its 3 s
    warn_if_exposed(server_options()[0], auth_on=basic_auth is not None)
    key_state = "已设置 (set)" if settings.has_api_key else "未设置 (NOT set: set MODELSCOPE_API_KEY to predict)"
    logger.info(
        "后端已就绪 (backend ready): model=%s, url=%s, API key %s",
        settings.model,
        settings.base_url,
        key_state,
    )
    return app


app = create_app()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="LLM pre-annotation ML backend for Label Studio")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", 9090)))
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("-d", "--debug", action="store_true", help="Flask debug mode (auto-reload)")
    args, _unknown = parser.parse_known_args()
    follow_launcher()  # `label-studio-ml start` stopped by a signal must not leave this server running
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True)
