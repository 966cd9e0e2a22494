"""lockbuild's image entrypoint: start MLflow's own scoring server for /opt/ml/model.

Runs inside the image with the image's interpreter. Reads /opt/lockbuild/runtime.json
(written from the lock) and lets the deployment override the port, host and worker count:
  PORT / MLFLOW_PORT, HOST / MLFLOW_HOST, MLFLOW_MODELS_WORKERS
MLflow >= 3 serves with uvicorn (FastAPI app), MLflow 2 with gunicorn (Flask app); both read
the model path from MLflow's __pyfunc_model_path__ variable (pinned MLflow version).
"""

import json
import os
import sys

RUNTIME = "/opt/lockbuild/runtime.json"


def main() -> None:
    with open(RUNTIME) as f:
        rt = json.load(f)
    # Kubernetes service links can inject MLFLOW_PORT=tcp://...: only a number counts as a port.
    port = next((p for p in (os.environ.get("PORT"), os.environ.get("MLFLOW_PORT")) if p and p.isdigit()),
                str(rt["port"]))
    host = os.environ.get("HOST") or os.environ.get("MLFLOW_HOST") or "0.0.0.0"
    workers = os.environ.get("MLFLOW_MODELS_WORKERS") or str(rt["workers"])
    os.environ["__pyfunc_model_path__"] = rt["model_path"]
    py = sys.executable
    if rt["server"] == "uvicorn":
        argv = [py, "-m", "uvicorn", "--host", host, "--port", port, "--workers", workers,
                "mlflow.pyfunc.scoring_server.app:app"]
    else:
        argv = [py, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers", workers, "--timeout", "120",
                "mlflow.pyfunc.scoring_server.wsgi:app"]
    print("lockbuild: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execv(py, argv)


if __name__ == "__main__":
    main()
