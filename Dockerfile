# LLM pre-annotation ML backend for Label Studio, served by gunicorn on port 9090.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=8 \
    GUNICORN_TIMEOUT=120 \
    DATA_DIR=/data \
    LOG_DIR=/data/logs

WORKDIR /app
COPY requirements.txt overrides.txt ./
# overrides.txt: the current Flask/Werkzeug/Jinja2 stack instead of label-studio-ml 1.0.9's 2021 pins.
RUN pip install "uv>=0.5,<1" && uv pip install --system -r requirements.txt --override overrides.txt
COPY my_ml_backend ./my_ml_backend
COPY gunicorn.conf.py ./
COPY examples ./examples
COPY check_modelscope_env.py check_openai_client.py check_modelscope_text.py check_ml_backend.py test_openai_client.py test_modelscope_text.py test_ml_backend.py ./
# The command-line jobs, so that users can run them in the container (docker compose exec ml-backend python …).
COPY batch_predict.py evaluate.py ./

EXPOSE 9090
VOLUME ["/data"]
# The probe sends the basic-auth credentials when they are set: /health answers 401 without them.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import base64, os, urllib.request as u; r = u.Request('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090')); user = os.environ.get('BASIC_AUTH_USER'); user and r.add_header('Authorization', 'Basic ' + base64.b64encode(('%s:%s' % (user, os.environ.get('BASIC_AUTH_PASS', ''))).encode()).decode()); u.urlopen(r, timeout=3)"
CMD ["sh", "-c", "exec gunicorn --config gunicorn.conf.py --bind 0.0.0.0:${PORT} --workers ${WORKERS} --threads ${THREADS} --timeout ${GUNICORN_TIMEOUT} my_ml_backend._wsgi:app"]
