pytest_plugins = ["tests.mlflow_server", "tests.conftest_services", "tests.tiny_project"]
