import importlib
import inspect
import os

import yaml

from sqz.config import DataConfig, PipelineConfig, SweepConfig, TrainConfig, config_from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOWS = {"squeeze_pipeline", "train_model", "sweep_compression", "compress_model", "report_saved_run", "import_released"}
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


def test_the_example_automation_is_a_valid_trigger_on_sqz_events():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from flows.report_flow import SWEEP_FINISHED

    triggers = [(d["name"], t) for d in _spec()["deployments"] for t in d.get("triggers", [])]
    assert triggers
    for name, trigger in triggers:
        parsed = DeploymentEventTrigger.model_validate(trigger)  # what `prefect deploy` builds the automation from
        assert parsed.expect == {SWEEP_FINISHED}, name
        deployment = next(d for d in _spec()["deployments"] if d["name"] == name)
        module, function = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), function)
        # Every templated parameter is one the flow takes, and it names a field of the event's payload.
        assert set(parsed.parameters) <= set(inspect.signature(flow.fn).parameters), name
        assert all("event.payload." in value for value in parsed.parameters.values()), name


def test_every_deployed_flow_parameter_is_described_for_the_run_form():
    from prefect.utilities.callables import parameter_schema

    for deployment in _spec()["deployments"]:
        module, function = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), function)
        schema = parameter_schema(flow.fn)  # what the UI's run form shows, descriptions from the docstring
        undescribed = [name for name, field in schema.properties.items() if not field.get("description")]
        assert not undescribed, f"{deployment['name']}: {undescribed}"
