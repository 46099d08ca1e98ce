import importlib
import inspect
import os

import yaml

from sqz.config import DataConfig, PipelineConfig, SweepConfig, TrainConfig, config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOWS = {"squeeze_pipeline", "train_model", "sweep_compression", "compress_model", "report_run", "import_released"}
CONFIGS = {"train_config": TrainConfig, "data_config": DataConfig, "sweep_config": SweepConfig, "config": PipelineConfig}


def _spec():
    return yaml.safe_load(open(os.path.join(ROOT, "prefect.yaml")))


def test_every_deployment_points_at_a_flow_with_those_parameters():
    spec = _spec()
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        parameters = deployment.get("parameters", {})
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(parameters) <= accepted, deployment["name"]
        flow.validate_parameters(parameters)  # types, as Prefect checks a run's parameters
        for key, cls in CONFIGS.items():  # config parameters are valid sqz configs
            if key in parameters:
                config_from_dict(cls, parameters[key])


def test_each_flow_is_deployed_to_the_process_and_the_kubernetes_pool():
    pools: dict[str, set[str]] = {}
    for deployment in _spec()["deployments"]:
        flow = deployment["entrypoint"].split(":")[1]
        pools.setdefault(flow, set()).add(deployment["work_pool"]["name"])
    assert pools == {flow: {"sqz-local", "sqz-k8s"} for flow in FLOWS}


def test_prefect_reads_the_file_and_its_schedules():
    # Prefect's own model of prefect.yaml (what `prefect deploy` validates against).
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule

    model = PrefectYamlModel.model_validate(_spec())
    assert len(model.deployments) == len(_spec()["deployments"])
    crons = [s.cron for d in model.deployments for s in d.schedules or []]
    assert crons and all(CronSchedule(cron=c).cron == c for c in crons)
