"""The release as a person sees it in the Prefect UI (the default, v2): headless Debian
Chromium driven by Selenium through Debian's chromium-driver, against a real `prefect server
start` serving its UI and a process worker (tests/stack.py). Two environments are saved
before `prefect deploy`, so the form offers exactly them: `staging`, and `production`, which
requires an approval. Every step leaves a screenshot under the test's tmp_path.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.schemas.objects import FlowRun
from prefect_docker import DockerRegistryCredentials
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from blocks.environment import ReleaseEnvironment
from ledger.store import Ledger
from targets.docker_host import L_ENV
from tests import services
from tests.backend import TEST_REPOSITORY
from tests.releases import served_version
from tests.stack import Stack, completed, deploy, runs_of, start_server, start_worker, subflows
from tests.test_triggers import paused_release

# One stack (server, deployments, worker, browser) for the module: its tests on one xdist
# worker, else each worker they land on builds its own (~100 s each on this machine).
pytestmark = [pytest.mark.ui, pytest.mark.triggers, pytest.mark.xdist_group("ui")]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEPLOYMENT = "release-from-ui/release"
ENVIRONMENTS = ["production", "staging"]  # the blocks on the server, as the form lists them
FIELDS = [  # what a person decides first: where, what, then the knobs
    "environment",
    "image",
    "source",
    "git_ref",
    "subdir",
    "version",
    "worker_count",
    "dry_run",
    "allow_breaking",
    "on_busy",
]
WAIT = 120  # seconds a page may take to show what a step waits for
RESUBMIT = 20  # seconds after which a click that left the form in place is repeated


# --- the stack: server with its UI, environments, deployments, worker --------------------


@pytest.fixture(scope="module")
def environments(processes, tmp_path_factory, registry, pg, engine) -> Iterator[dict]:
    """The server, the two environment blocks (images from the main registry, each its own
    database and API port), then the deployments of prefect.yaml."""
    stack = start_server(processes, tmp_path_factory.mktemp("ui-server"), ui=True, deployed=False)
    databases = [pg.create_database() for _ in ENVIRONMENTS]
    envs = {}
    with stack.settings():
        for name, database in zip(ENVIRONMENTS, databases, strict=True):
            envs[name] = ReleaseEnvironment(
                environment=f"{stack.prefix}-{name}",
                image_repository=TEST_REPOSITORY,
                registry_credentials=DockerRegistryCredentials(
                    username=registry.username,
                    password=registry.password,
                    registry_url=registry.address,
                ),
                database_url=Secret(value=pg.url(database)),
                api_port=services.free_port(),
                worker_count=0,
                health_budget_seconds=20,
                health_consecutive=2,
                health_interval_seconds=0.5,
                require_approval=name == "production",
                approval_timeout_seconds=300,
            )
            envs[name].save(name)
    deploy(stack)
    start_worker(processes, stack)
    yield stack, envs
    for env in envs.values():
        for container in engine.containers.list(
            all=True, filters={"label": f"{L_ENV}={env.environment}"}
        ):
            container.remove(force=True)
    for database in databases:
        pg.drop_database(database)


@pytest.fixture(scope="module")
def stack(environments) -> Stack:
    return environments[0]


@pytest.fixture(scope="module")
def image(build_backend) -> str:
    """A pushed backend image, pinned by digest: what a person pastes into the form."""
    return build_backend("ui-v1")


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    for path in (CHROMIUM, CHROMEDRIVER):
        assert path.is_file(), f"{path} is missing: run `scripts/services.sh browser` (as root)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,2600")  # toasts (bottom right) clear of buttons
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


class Ui:
    """The Prefect UI of `stack` in the browser; screenshots go to `shots`."""

    def __init__(self, driver: WebDriver, stack: Stack, shots: Path):
        self.driver, self.base, self.shots = driver, stack.api_url.removesuffix("/api"), shots
        self.steps = 0

    def open(self, path: str) -> None:
        self.driver.get(f"{self.base}/v2{path}")

    def shot(self, step: str) -> None:
        self.steps += 1
        self.driver.save_screenshot(str(self.shots / f"{self.steps:02d}-{step}.png"))

    def until(self, condition, what: str):
        """Wait for `condition` (a page renders as it loads); on a timeout, a screenshot of
        what the page showed instead."""
        try:
            return WebDriverWait(self.driver, WAIT).until(lambda _: condition())
        except TimeoutException:
            self.shot("timed-out")
            raise AssertionError(f"{what} never showed on {self.driver.current_url}") from None

    def find(self, xpath: str, within: WebElement | None = None) -> WebElement:
        root = within or self.driver
        return self.until(
            lambda: next(
                (e for e in root.find_elements(By.XPATH, xpath) if e.is_displayed()), None
            ),
            xpath,
        )

    def click(self, text: str, within: WebElement | None = None) -> None:
        self.find(
            f".//*[self::button or @role='menuitem' or @role='option' or @role='tab']"
            f"[normalize-space()='{text}']",
            within,
        ).click()

    def label(self, name: str, within: WebElement | None = None) -> WebElement:
        return self.find(
            f".//label[normalize-space()='{name}' or normalize-space()='{name} (Optional)']", within
        )

    def field(self, name: str, within: WebElement | None = None) -> WebElement:
        return self.driver.find_element(By.ID, self.label(name, within).get_attribute("for"))

    def group(self, name: str) -> WebElement:
        """The block of one form field: its label, description, input and errors."""
        return self.label(name).find_element(
            By.XPATH, "./ancestor::div[contains(@class, 'group')][1]"
        )

    def description(self, name: str) -> str:
        return self.label(name).find_element(By.XPATH, "./following-sibling::p").text

    def type(self, name: str, text: str, within: WebElement | None = None) -> None:
        field = self.field(name, within)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(text)

    def choose(self, name: str, choice: str) -> None:
        self.find(f"//button[@aria-label='Select {name}']").click()
        self.click(choice)

    def choices(self, name: str) -> list[str]:
        self.find(f"//button[@aria-label='Select {name}']").click()
        self.find("//*[@role='option']")
        texts = [
            option.text for option in self.driver.find_elements(By.XPATH, "//*[@role='option']")
        ]
        self.find("//*[@role='listbox']").send_keys(Keys.ESCAPE)
        return texts

    def tables(self, showing: str) -> list[str]:
        """The text of every table on the page, once one of them shows `showing`."""

        def read() -> list[str] | None:
            try:
                texts = [t.text for t in self.driver.find_elements(By.TAG_NAME, "table")]
            except StaleElementReferenceException:  # re-rendered while read
                return None
            return texts if any(showing in text for text in texts) else None

        return self.until(read, f"a table showing {showing!r}")

    def wait_text(self, text: str, within: WebElement | None = None) -> None:
        self.until(
            lambda: text in (within or self.driver.find_element(By.TAG_NAME, "body")).text,
            repr(text),
        )


@pytest.fixture
def ui(browser, stack, tmp_path) -> Ui:
    return Ui(browser, stack, tmp_path)


def deployment(stack: Stack):
    with stack.client() as client:
        return client.read_deployment_by_name(DEPLOYMENT)


def submit_release(ui: Ui, stack: Stack, environment: str, image: str) -> FlowRun:
    """Fill the release form with an environment and an image (the rest as it comes),
    submit it, and return the flow run it created."""
    before = {r.id for r in runs_of(stack, DEPLOYMENT)}
    ui.open(f"/deployments/deployment/{deployment(stack).id}/run")
    ui.choose("environment", environment)
    ui.type("image", image)
    ui.shot(f"form-{environment}")
    # The run exists (the UI's "scheduled to start now" toast may come and go between two
    # looks on a busy machine: the server's word is what counts).
    runs = click_until(
        ui,
        "Submit",
        lambda: [r for r in runs_of(stack, DEPLOYMENT) if r.id not in before],
        still_there=lambda: ui.driver.current_url.endswith("/run"),
        what="the form started no run",
    )
    [flow_run] = runs
    ui.shot(f"submitted-{environment}")
    return flow_run


def click_until(ui: Ui, button: str, done, *, still_there, what: str, within=None):
    """Click `button`, then wait for the server to show `done()` (returned). On a busy
    machine a click can land while the page still validates what was typed, and do
    nothing: while the page `still_there()` shows the form, the person clicks again every
    RESUBMIT seconds."""
    ui.click(button, within)
    deadline, clicked = time.monotonic() + WAIT, time.monotonic()
    while not (result := done()):
        if time.monotonic() > deadline:
            ui.shot("no-effect")
            pytest.fail(f"{what} within {WAIT} s")
        if time.monotonic() - clicked > RESUBMIT and still_there():
            ui.shot(f"clicked-{button.lower()}-again")
            ui.click(button, within)
            clicked = time.monotonic()
        time.sleep(0.5)
    return result


def shown(element: WebElement) -> bool:
    try:
        return element.is_displayed()
    except StaleElementReferenceException:  # gone from the page
        return False


# --- the form ---------------------------------------------------------------------------


def test_the_release_form_reads_like_a_form_and_refuses_bad_values(ui, stack):
    schema = deployment(stack).parameter_openapi_schema["properties"]
    ui.open(f"/deployments/deployment/{deployment(stack).id}/run")
    ui.find("//h3[normalize-space()='Parameters']")
    ui.shot("form")

    labels = [
        label.text.removesuffix(" (Optional)")
        for label in ui.driver.find_elements(By.XPATH, "//form//label")
    ]
    assert [name for name in labels if name in schema] == FIELDS
    assert "Property is type" not in ui.driver.find_element(By.TAG_NAME, "body").text
    for name in FIELDS:
        assert ui.description(name) == " ".join(schema[name]["description"].split())
    assert ui.choices("environment") == ENVIRONMENTS

    runs_before = len(runs_of(stack, DEPLOYMENT))
    ui.choose("environment", "staging")
    ui.type("image", "Not An Image")
    ui.click("Submit")
    ui.wait_text("does not match", ui.group("image"))
    ui.shot("malformed-image-refused")
    assert len(runs_of(stack, DEPLOYMENT)) == runs_before

    ui.type("image", "")
    ui.type("worker_count", "101")
    ui.click("Submit")
    worker_count = ui.field("worker_count")
    assert ui.driver.execute_script("return arguments[0].validity.rangeOverflow", worker_count)
    assert "100" in worker_count.get_attribute("validationMessage")
    ui.shot("worker-count-refused")
    assert len(runs_of(stack, DEPLOYMENT)) == runs_before


# --- a release from the form ------------------------------------------------------------


@pytest.fixture(scope="module")
def staging_release(browser, stack, image, tmp_path_factory) -> FlowRun:
    """A release of `image` to staging, submitted in the form and run by the worker."""
    ui = Ui(browser, stack, tmp_path_factory.mktemp("staging-release"))
    return completed(stack, submit_release(ui, stack, "staging", image))


def test_a_release_submitted_in_the_form_is_run_by_the_worker(
    ui, stack, environments, image, staging_release
):
    _, envs = environments
    assert served_version(envs["staging"]) == "ui-v1"
    assert staging_release.parameters["image"] == image

    ui.open(f"/runs/flow-run/{staging_release.id}")
    ui.wait_text("Completed")
    ui.shot("completed")


def test_the_summary_and_the_ledger_render_as_tables_on_the_runs_page(
    ui, stack, environments, staging_release
):
    _, envs = environments
    [release] = subflows(stack, staging_release.id)
    tables = {}
    steps = "step start duration outcome timeline"
    for kind, showing in (("release", steps), ("ledger", "ui-v1")):
        key = f"{kind}-{envs['staging'].environment}"  # keys name the environment's name
        ui.open(f"/runs/flow-run/{release.id}")
        ui.click("Artifacts")
        ui.find(f"//h3[normalize-space()='{key}']").click()
        tables[kind] = ui.tables(showing)
        ui.shot(key)

    summary, [ledger] = tables["release"], tables["ledger"]
    assert any(t.startswith(steps) and "verify-api" in t for t in summary), summary
    assert any("ui-v1" in t and "schema revision" in t for t in summary), summary
    assert all(header in ledger for header in ("started by", "outcome", "version")), ledger
    assert "released" in ledger and "ui-v1" in ledger, ledger


# --- approval ---------------------------------------------------------------------------


def test_a_release_to_production_is_approved_in_the_ui(ui, stack, environments, image):
    _, envs = environments
    flow_run = submit_release(ui, stack, "production", image)
    release = paused_release(stack, flow_run.id)

    ui.open(f"/runs/flow-run/{release.id}")
    ui.wait_text("Paused")
    ui.shot("paused")
    ui.click("Open menu")
    ui.click("Resume")
    dialog = ui.find("//*[@role='dialog']")
    ui.wait_text("Approve releasing", dialog)
    ui.type("Approved By", "alice", dialog)
    ui.type("Comment", "go", dialog)
    ui.shot("approval")

    def resumed() -> bool:
        with stack.client() as client:
            return not client.read_flow_run(release.id).state.is_paused()

    click_until(
        ui,
        "Resume",
        resumed,
        still_there=lambda: shown(dialog),
        what="the release was not resumed",
        within=dialog,
    )

    completed(stack, flow_run)
    assert served_version(envs["production"]) == "ui-v1"
    with Ledger(envs["production"].database_url_value()) as ledger:
        assert ledger.history(envs["production"].environment)[0].approved_by == "alice (go)"
    ui.open(f"/runs/flow-run/{release.id}")
    ui.wait_text("Completed")
    ui.shot("approved-and-completed")
