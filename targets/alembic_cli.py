"""How every Alembic call runs in the migrate image: in the application's Alembic directory,
with its config file and executable (the application spec's `migrate`). Pure command
builders: each returns the argv of a one-off container."""

import shlex
from dataclasses import dataclass
from pathlib import Path

NO_DIRECTORY = 98  # exit code: the configured directory does not exist in the image
IMAGE_CHECK = (Path(__file__).with_name("image_check.py")).read_text()


@dataclass(frozen=True)
class AlembicCli:
    directory: str | None = None  # None: the image's WORKDIR
    config: str = "alembic.ini"
    executable: tuple[str, ...] = ("alembic",)

    def run(self, *args: str) -> list[str]:
        """One Alembic command, e.g. run("upgrade", "head")."""
        return self.script('app_alembic "$@"', *args)

    def script(self, body: str, *args: str) -> list[str]:
        """A shell script in which `app_alembic ...` is this application's Alembic."""
        return ["sh", "-c", self._prelude() + body, "alembic-script", *args]

    def probe(self, lower: str | None, upper: str) -> list[str]:
        """targets/image_check.py's probe of the revisions in (lower, upper]."""
        return self._image_check("probe", self.config, lower or "", upper)

    def rehearse(self, scratch_marker: str, steps: list[str]) -> list[str]:
        """targets/image_check.py's rehearsal: prove the scratch database, run the steps."""
        return self._image_check("rehearse", self.config, scratch_marker, *steps)

    def _image_check(self, *args: str) -> list[str]:
        """targets/image_check.py run by the Python that runs Alembic: the interpreter of
        the `alembic` script (its #! line), or the one before `-m alembic`."""
        if list(self.executable[-2:]) == ["-m", "alembic"]:
            python = " ".join(shlex.quote(p) for p in self.executable[:-2])
        else:
            exe = shlex.quote(self.executable[0])
            python = f'py=$(sed -n "1s/^#! *//p" "$(command -v {exe})"); ${{py:-python3}}'
        return self.script(f'{python} -c "$@"', IMAGE_CHECK, *args)

    def _prelude(self) -> str:
        cd = ""
        if self.directory:
            where = shlex.quote(self.directory)
            missing = f'{{ echo "no directory {where} in the image"; exit {NO_DIRECTORY}; }}'
            cd = f"cd {where} || {missing}; "
        exe = " ".join(shlex.quote(p) for p in self.executable)
        return f'{cd}app_alembic() {{ {exe} -c {shlex.quote(self.config)} "$@"; }}; '
