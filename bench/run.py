"""`make bench`: the release flow against the seed's procedure done by hand
(bench/baseline.sh: docker build, login + push, migrate in a one-off container, replace the
API and the workers, poll /health), same example backend, same local services, measured in
one run. Each round alternates which of the two goes first.

Figures (min / median / max over BENCH_ROUNDS rounds, default 3):
- full_release_ratio: flow / script, releasing a code change (goal <= 1.0)
- noop_release_ratio: flow / script, re-releasing what already runs (goal <= 0.3)
- rollback_seconds: a broken image (/health 503), no schema change: from the end of the
  failed verification to the end of the rollback subflow, which ends only once the previous
  version is verified healthy (goal <= 5)
- schema_rollback_seconds: the same with a pending migration, so the rollback downgrades
- event_to_run_seconds: image push -> the triggered flow run started (worker polls 1 s, its
  flow runs forked from a warm engine)
- version_5000_files: the content version of a 5,000-file monorepo against `tar -c` of its
  build context (bench/version_speed.py), seconds each
- scale: one code change released to 1, 2, 4 and 8 environments at once by one
  release-to-many run (flows/fan_out.py: built and pushed once, one release subflow per
  environment), in its own process, total wall time; BENCH_SCALE_ROUNDS rounds (default 1).
  scale_8_to_1_ratio: 8 environments / 1 (goal <= 2.5).

Writes bench/results.json (figures, raw samples, the flow's per-step seconds, the peak
memory of the flow's process, the import time of the flow modules, the machine) and prints
a table. A sample that fails is recorded as failed, with its reason, and the bench goes on:
every figure that has samples is written. Needs the services from scripts/services.sh.
"""

import os

# The expected failures (broken images being rolled back) would log tracebacks.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import events, version_speed  # noqa: E402
from bench.lab import Lab  # noqa: E402
from bench.runs import rollback_timeline  # noqa: E402
from tests import services  # noqa: E402
from tests.backend import TEST_REPOSITORY  # noqa: E402
from tests.stack import (  # noqa: E402
    Processes,
    deploy,
    start_bridge,
    start_registry,
    start_server,
    start_worker,
)

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SCALE_ROUNDS = int(os.environ.get("BENCH_SCALE_ROUNDS", "1"))
SCALE = (1, 2, 4, 8)
SCALE_WORKERS = 1
OUT = Path(__file__).with_name("results.json")
GOALS = {  # each figure's median should be at most this
    "full_release_ratio": 1.0,
    "noop_release_ratio": 0.3,
    "rollback_seconds": 5.0,
    "schema_rollback_seconds": 5.0,
    "event_to_run_seconds": 3.0,
}


STARTED = time.perf_counter()


def say(message: str) -> None:
    print(f"[bench {time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class Samples(defaultdict):
    """Figures' raw samples by name, and why a sample failed (`failures`)."""

    def __init__(self):
        super().__init__(list)
        self.failures: dict[str, list[str]] = defaultdict(list)

    def take(self, name: str, measure, *args):
        """measure(*args), or None (the failure recorded) if it raises."""
        try:
            return measure(*args)
        except Exception as exc:  # noqa: BLE001 - one failed sample must not lose the rest
            reason = f"{type(exc).__name__}: {exc}"[-1500:]
            self.failures[name].append(reason)
            say(f"{name}: FAILED ({reason[:200]})")
            return None


def measure(lab: Lab, stack, registry2: str, samples: Samples) -> None:
    """The alternating rounds: flow vs script, rollbacks, push events."""
    flow_env, script_env = lab.flow_environment("flow"), lab.script_environment("script")
    # The failed verification's budget is not part of the figure: keep it short.
    rollback_env = lab.flow_environment("rollback", health_budget_seconds=6)
    schema_env = lab.flow_environment("schema", health_budget_seconds=6)
    say("setting up: version 0 everywhere, the schema environment at revision 0002")
    v0 = f"{lab.prefix}-v0"
    _, first = lab.flow(flow_env, v0)
    lab.script(script_env, v0)
    lab.flow(rollback_env, v0)
    lab.flow(schema_env, f"{v0}-0002", head="0002")

    for r in range(ROUNDS):
        versions = {"flow": f"{lab.prefix}-f{r}", "script": f"{lab.prefix}-s{r}"}
        order = ("script", "flow") if r % 2 == 0 else ("flow", "script")
        for kind, outcome in (("release", "released"), ("noop", "no-op")):
            timed = {}
            for who in order:
                if who == "script":
                    timed[who] = samples.take(
                        f"script_{kind}", lab.script, script_env, versions[who]
                    )
                else:
                    timed[who] = samples.take(
                        f"flow_{kind}", flow_sample, lab, flow_env, versions[who], outcome
                    )
            if None in timed.values():
                continue  # a ratio needs both of its round's samples
            seconds, steps = timed["flow"]
            samples[f"flow_{kind}_steps"].append(steps)
            samples[f"flow_{kind}"].append(seconds)
            samples[f"script_{kind}"].append(timed["script"])
            say(f"round {r + 1}: {kind} flow {seconds:.1f} s, script {timed['script']:.1f} s")
        for key, env in (("rollback", rollback_env), ("schema_rollback", schema_env)):
            bad = f"{lab.prefix}-bad-{key}{r}"
            timeline = samples.take(f"{key}_seconds", rollback_sample, lab, env, bad)
            if timeline:
                samples[f"{key}_seconds"].append(timeline["rollback_end"])
                samples[f"{key}_api_healthy_seconds"].append(timeline["api_healthy"])
                say(f"round {r + 1}: {key} {timeline['rollback_end']:.1f} s")
        latency = samples.take(
            "event_to_run_seconds", events.event_to_run, stack, lab, registry2, first["image"]
        )
        for name, seconds in (latency or {}).items():
            samples[f"event_{name}"].append(seconds)
        if latency:
            say(f"round {r + 1}: push -> run started {latency['from_push']:.2f} s")


def flow_sample(lab: Lab, env, version: str, outcome: str) -> tuple[float, dict]:
    """One timed release with the flow: (seconds, its steps' seconds)."""
    seconds, summary = lab.flow(env, version)
    if summary["outcome"] != outcome:
        raise RuntimeError(f"expected {outcome}: {summary['message']}")
    return seconds, {s["name"]: s["seconds"] for s in summary["steps"]}


def rollback_sample(lab: Lab, env, version: str) -> dict[str, float]:
    lab.failed_flow(env, version, fail_health="1")
    return rollback_timeline(env.environment)


def measure_scale(lab: Lab, api_url: str, samples: Samples) -> dict[int, list[float]]:
    """A code change released to N environments at once by one release-to-many run in its
    own process (bench/child.py), against the one Prefect server."""
    # One image repository for all of them, as staging, eu and us share one: the change is
    # built and pushed once, then released to each environment.
    shared = dict(image_repository=f"{TEST_REPOSITORY}-scale", worker_count=SCALE_WORKERS)
    envs = [
        # Rehearsal is off only for the untimed first release (from an empty database);
        # the measured releases have no pending migration, so nothing to rehearse anyway.
        lab.flow_environment(f"scale{i}", migration_rehearsal=False, **shared)
        for i in range(max(SCALE))
    ]
    say(f"scale: version 0 to {len(envs)} environments")
    samples.take("scale_setup", at_once, lab, api_url, envs, f"{lab.prefix}-v0")
    seconds: dict[int, list[float]] = defaultdict(list)
    for r in range(SCALE_ROUNDS):
        for n in SCALE:
            version = f"{lab.prefix}-n{n}r{r}"
            took = samples.take(f"scale_{n}", at_once, lab, api_url, envs[:n], version)
            if took is not None:
                seconds[n].append(took)
                say(f"scale: {n} environment(s) at once {took:.1f} s")
    return seconds


def at_once(lab: Lab, api_url: str, envs: list, version: str) -> float:
    """Seconds from telling the (ready) release-to-many process to go until it has exited,
    having released one code change (`version`) to every environment of `envs`."""
    source = str(lab.context(version))
    lab.images.add(f"{envs[0].image_repository}:{version}")  # removed by lab.clean()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.child", source, version, *(e.environment for e in envs)],
        env={**os.environ, "PREFECT_API_URL": api_url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if child.stdout.readline().strip() != "ready":
        raise RuntimeError(f"bench.child did not start:\n{child.communicate()[1][-3000:]}")
    started = time.perf_counter()
    _, stderr = child.communicate("go\n")
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(
            f"the release of {version} to {len(envs)} environment(s) failed:\n{stderr[-3000:]}"
        )
    return seconds


def machine(engine) -> dict:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "docker": engine.version()["Version"],
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def import_rounds(samples: Samples, api_url: str, rounds: int = 3) -> None:
    """How long a fresh interpreter takes to import Prefect, then the flow modules on top
    (what a worker's flow-run process pays before its flow starts without a warm engine,
    and what the warm engine pays once: flows/warm_engine.py), against the bench's
    server as a worker's would be: without an API URL, the form's environment choices
    would start a temporary Prefect server. A round that fails is recorded as failed."""
    code = (
        "import time; t = time.perf_counter(); import prefect; p = time.perf_counter(); "
        "import flows.entry; print(p - t, time.perf_counter() - p)"
    )
    env = {**os.environ, "PREFECT_API_URL": api_url}

    def once() -> None:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1000:]}")
        prefect_seconds, flows_seconds = map(float, done.stdout.split())
        samples["import_prefect_seconds"].append(prefect_seconds)
        samples["import_flows_on_top_seconds"].append(flows_seconds)

    for _ in range(rounds):
        samples.take("import_flows", once)


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory: this process (the flows run in it) and the largest child
    (the scale phase's release-to-many process)."""

    def mb(who) -> float:
        return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # kB on Linux

    return {"flow_process": mb(resource.RUSAGE_SELF), "largest_child": mb(resource.RUSAGE_CHILDREN)}


def results(samples: Samples, scale: dict[int, list[float]], host: dict) -> dict:
    def ratios(kind: str) -> list[float]:
        pairs = zip(samples[f"flow_{kind}"], samples[f"script_{kind}"], strict=True)
        return [flow / script for flow, script in pairs]

    missing: dict[str, str] = {}  # figure -> why it has no value

    def step_medians(kind: str) -> dict[str, float] | None:
        rounds = samples.pop(f"flow_{kind}_steps", [])
        if not rounds:
            missing[f"flow_{kind}_steps_median_seconds"] = (
                f"no {kind} round of the flow succeeded (see failures)"
            )
            return None
        steps = defaultdict(list)
        for round_steps in rounds:
            for name, seconds in round_steps.items():
                steps[name].append(seconds)
        return {name: statistics.median(v) for name, v in steps.items()}

    samples["full_release_ratio"], samples["noop_release_ratio"] = ratios("release"), ratios("noop")
    one = statistics.median(scale[1]) if scale.get(1) else None
    release_steps, noop_steps = step_medians("release"), step_medians("noop")
    return {
        "full_release_ratio": stats(samples["full_release_ratio"]),
        "noop_release_ratio": stats(samples["noop_release_ratio"]),
        "rollback_seconds": stats(samples["rollback_seconds"]),
        "schema_rollback_seconds": stats(samples["schema_rollback_seconds"]),
        "event_to_run_seconds": stats(samples["event_from_push"]),
        "rollback_api_healthy_seconds": stats(samples["rollback_api_healthy_seconds"]),
        "schema_rollback_api_healthy_seconds": stats(
            samples["schema_rollback_api_healthy_seconds"]
        ),
        "version_5000_files": {
            "content_version_seconds": stats(samples["content_version"]),
            "tar_context_seconds": stats(samples["tar_context"]),
        },
        "scale": [{"environments": n, **stats(v)} for n, v in sorted(scale.items())],
        "scale_8_to_1_ratio": statistics.median(scale[8]) / one if one and scale.get(8) else None,
        "failures": dict(samples.failures),
        "every_sample_succeeded": not samples.failures,
        "missing": missing,
        "peak_memory_mb": peak_memory_mb(),
        "import_seconds": {
            "prefect": stats(samples["import_prefect_seconds"]),
            "flows_on_top": stats(samples["import_flows_on_top_seconds"]),
        },
        # Where the flow's time goes (the release summary's per-step seconds).
        "flow_release_steps_median_seconds": release_steps,
        "flow_noop_steps_median_seconds": noop_steps,
        "samples": dict(samples),
        "goals": {name: f"median <= {goal}" for name, goal in GOALS.items()},
        "rounds": ROUNDS,
        "scale_rounds": SCALE_ROUNDS,
        "notes": {
            "ratios": "per round: flow wall time / script wall time, each to its own "
            "environment (own database, port, containers), 2 workers, a changed file",
            "rollback": "from the failed verify-api's end_time to the rollback subflow's "
            "end_time (Prefect API); *_api_healthy_seconds: to the end of the rollback's "
            "own verify-api (the previous version answering healthy)",
            "event_to_run_seconds": "from the earlier of the bridge's receipt of the "
            "registry notification and the push call returning, to the run's start_time",
            "scale": "one code change released to N environments by one release-to-many run "
            "in its own process (bench/child.py): built and pushed once, then one release "
            f"subflow per environment, all at once (a thread each); {SCALE_WORKERS} worker per "
            f"environment; timed from 'go' to the process's exit; {SCALE_ROUNDS} round(s)",
        },
        "machine": host,
        "prefect_server_database": "postgresql (the local PostgreSQL 15)",
    }


def table(data: dict) -> str:
    def cells(figure: dict) -> str:
        return "".join(
            f"{'-' if figure[k] is None else f'{figure[k]:.2f}':>9}"
            for k in ("median", "min", "max")
        )

    lines = [f"{'figure':<34}{'median':>9}{'min':>9}{'max':>9}  goal"]
    for name in (*GOALS, "rollback_api_healthy_seconds", "schema_rollback_api_healthy_seconds"):
        figure, goal = data[name], GOALS.get(name)
        verdict = ""
        if goal is not None:
            met = figure["median"] is not None and figure["median"] <= goal
            verdict = f"<= {goal:g} " + ("met" if met else "MISSED")
        lines.append(f"{name:<34}{cells(figure)}  {verdict}")
    for row in data["scale"]:
        lines.append(
            f"{'scale: ' + str(row['environments']) + ' environment(s), s':<34}{cells(row)}"
        )
    ratio = data["scale_8_to_1_ratio"]
    lines.append(f"{'scale: 8 / 1 environments':<34}{'-' if ratio is None else f'{ratio:.2f}':>9}")
    for name, reasons in data["failures"].items():
        lines.append(f"FAILED {name} x{len(reasons)}: {reasons[-1][:300]}")
    for name, reason in data["missing"].items():
        lines.append(f"MISSING {name}: {reason}")
    return "\n".join(lines)


def main() -> None:
    pg, registry, engine = services.postgres(), services.registry(), services.docker_engine()
    host = machine(engine)
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    processes = Processes(root)
    lab = Lab(root, pg, registry, engine)
    samples, scale = Samples(), {}
    say("timing the content version of a 5,000-file monorepo against tar of its context")
    samples.update(samples.take("version_5000_files", version_speed.measure, ROUNDS) or {})
    try:
        say("starting a Prefect server, the worker, a second registry and the event bridge")
        # The server on PostgreSQL, as Prefect advises for production: on SQLite, a write
        # right after a flow's tasks (the release record) can wait ~2 s for the database.
        server_db = pg.url(lab.database()).replace("postgresql://", "postgresql+asyncpg://")
        stack = start_server(processes, root, server_db, deployed=False)
        registry2 = start_registry(processes, stack)
        with stack.settings():
            events.save_target(lab, registry2)  # the forms offer the environment blocks
        deploy(stack)
        start_bridge(processes, stack, events.route(registry2))
        start_worker(processes, stack)
        with stack.settings():
            import_rounds(samples, stack.api_url)
            samples.take("rounds", measure, lab, stack, registry2, samples)
            scale = samples.take("scale", measure_scale, lab, stack.api_url, samples) or {}
    except Exception as exc:  # noqa: BLE001 - the stack did not start: say so, write the rest
        samples.failures["setup"].append(f"{type(exc).__name__}: {exc}"[-1500:])
    finally:
        processes.stop_all()
        lab.clean()
        shutil.rmtree(root, ignore_errors=True)
    data = results(samples, scale, host)
    data["machine"]["load_average_at_end"] = os.getloadavg()
    data["wall_seconds"] = time.perf_counter() - STARTED
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(table(data))
    print(f"bench wall time {data['wall_seconds']:.0f} s; raw samples in {OUT}")


if __name__ == "__main__":
    main()
