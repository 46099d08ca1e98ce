import importlib
import inspect
import os

import yaml

from sqz.config import PipelineConfig, config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_deployment_points_at_a_flow_with_those_parameters():
    spec = yaml.safe_load(open(os.path.join(ROOT, "prefect.yaml")))
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
        if name == "squeeze_pipeline":  # the config parameter is a valid PipelineConfig
            config_from_dict(PipelineConfig, deployment["parameters"]["config"])
