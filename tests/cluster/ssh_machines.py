"""Machines that Ray's cluster launcher reaches over SSH, all on this computer, for `ray up` in a test.

Each `SshMachine` is a real OpenSSH server (`sshd`) on a loopback address (127.0.0.1 for the head,
127.0.0.2 for a worker: Ray's local provider keys its nodes by address, so two nodes need two), with its
own host key, a throwaway client key, key login only, and its own config file; the system's sshd and its
config are never touched. It runs in a PID and mount namespace of its own (`unshare`), which makes it a
machine of its own in the ways that matter here:

* Processes: a shell that logs in sees only the machine's processes. `ray down` runs `ray stop` on the
  head, and `ray stop` kills every Ray process it can see; here it sees this machine's only, never the
  Ray of other programs on the computer. Killing the namespace's first process (sshd) ends everything
  started inside, so nothing can outlive the test.
* Home: the login's home folder (~, as ssh and every shell expand it) is a fresh folder of the machine's
  own, bind-mounted over the real one, so `~/gensearch`, `~/.bashrc`, `~/mlflow` and Ray's
  `~/ray_bootstrap_*` start empty as on a new machine and never touch the computer's. The Python the
  test's environment is built on is mounted back into it when it lives under the home (pyenv).
  `RAY_TMPDIR` gives each machine a Ray temp folder of its own.
* The project's environment: `~/gensearch/.venv` is an overlay of the test's own virtual environment
  (a copy-on-write view, its writes in memory), so `cluster/setup_node.sh` finds an environment with
  torch already in it, `pip install -e` runs for real, and the test's environment is left as it was.
* SSH settings: the ssh client config names the machines' SSH port (see write_ssh_client_config).

Environment variables for the machine (`env`) go in through sshd's `SetEnv`, like a machine's
/etc/environment: the ports and per-machine `ray start` options that keep two nodes and other programs'
Ray apart on one computer.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

SSHD = "/usr/sbin/sshd"
VENV = Path(sys.prefix)
LOGIN_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)  # what ssh expands ~ to, whatever $HOME says


def sandbox_problem() -> str | None:
    """Why this computer cannot host SSH machines, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (as in CI): sshd logs in as the current user and unshare makes namespaces"
    missing = [tool for tool in (SSHD, "ssh", "ssh-keygen", "rsync", "unshare") if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed; as root: apt-get install openssh-server rsync "
                "(.ci/run does this)")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create PID and mount namespaces here: {probe.stderr.strip()}"
    return None


def make_key(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


SSH_CLIENT_CONFIG = Path("/etc/ssh/ssh_config")


def write_ssh_client_config(path: Path, port: int, addresses: list[str]) -> Path:
    """The system's ssh client config with the machines' SSH port in front of it. Ray 2.60's `auth` has no
    port setting (its ssh_proxy_command is dropped from the config the head gets, so the head could not
    reach the workers with it); on a network whose SSH servers listen on another port, this is where the
    port goes. Seen only by the processes of `client_command` and of the machines: bind-mounted over
    /etc/ssh/ssh_config in their mount namespaces, the file itself untouched."""
    system = SSH_CLIENT_CONFIG.read_text() if SSH_CLIENT_CONFIG.is_file() else ""
    path.write_text(f"Host {' '.join(addresses)}\n    Port {port}\n\n{system}")
    return path


def client_command(ssh_client_config: Path, command: list[str]) -> list[str]:
    """`command` run with `ssh_client_config` as its ssh client config (a mount namespace of its own)."""
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c",
            f'mount --bind "$0" {SSH_CLIENT_CONFIG} && exec "$@"', str(ssh_client_config), *command]


def _namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class SshMachine:
    def __init__(self, name: str, address: str, port: int, root: Path, authorized_key: Path,
                 ssh_client_config: Path, env: dict[str, str]) -> None:
        self.name, self.address, self.port = name, address, port
        self.ssh_client_config = ssh_client_config
        self.root = root / name
        self.home = self.root / "home"
        self.env = {"RAY_TMPDIR": str(self.root / "tmp"), **env}
        self.authorized_key = authorized_key
        self.process: subprocess.Popen | None = None
        self.log = self.root / "sshd.log"

    def _config(self) -> Path:
        settings = [
            f"Port {self.port}", f"ListenAddress {self.address}", f"HostKey {self.root / 'host_key'}",
            "PidFile none", f"AuthorizedKeysFile {self.authorized_key}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", f"AllowUsers {getpass.getuser()}",
            "StrictModes no",  # the key lives under /tmp, which is world-writable
            "UsePAM no", "PermitUserRC no", "PrintMotd no", "PrintLastLog no",
            "SetEnv " + " ".join(f'{key}="{value}"' for key, value in self.env.items()),
        ]
        path = self.root / "sshd_config"
        path.write_text("\n".join(settings) + "\n")
        return path

    def start(self) -> None:
        for folder in (self.home / "gensearch" / ".venv", self.root / "tmp", self.root / "overlay"):
            folder.mkdir(parents=True, exist_ok=True)
        make_key(self.root / "host_key")
        config = self._config()
        subprocess.run([SSHD, "-t", "-f", str(config)], check=True)
        overlay, q = self.root / "overlay", lambda path: shlex.quote(str(path))
        steps = [
            "set -e",
            f"mount -t tmpfs tmpfs {q(overlay)}",
            f"mkdir {q(overlay / 'upper')} {q(overlay / 'work')}",
            "mount -t overlay overlay -o "
            + q(f"lowerdir={VENV},upperdir={overlay / 'upper'},workdir={overlay / 'work'}")
            + " " + q(self.home / "gensearch" / ".venv"),
        ]
        # What the new home would hide: the Python the environment is built on (pyenv), and the
        # environment's own path, which its console scripts' #! lines name (`ray down` runs `ray stop`).
        for hidden, shown in [(Path(sys.base_prefix), Path(sys.base_prefix)),
                              (VENV, self.home / "gensearch" / ".venv")]:
            if hidden.is_relative_to(LOGIN_HOME) and hidden != LOGIN_HOME / "gensearch" / ".venv":
                inside = self.home / hidden.relative_to(LOGIN_HOME)
                inside.mkdir(parents=True, exist_ok=True)
                steps.append(f"mount --bind {q(shown)} {q(inside)}")
        steps += [
            f"mount --rbind {q(self.home)} {q(LOGIN_HOME)}",
            f"mount --bind {q(self.ssh_client_config)} {SSH_CLIENT_CONFIG}",  # how the head reaches the workers
            "mkdir -p /run/sshd",  # sshd's privilege-separation folder (the package's service makes it)
            f"exec {SSHD} -D -e -f {q(config)}",
        ]
        boot = "; ".join(steps)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private",
                 "bash", "-c", boot], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while f"Server listening on {self.address} port {self.port}" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd ({self.name}) did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _init(self) -> psutil.Process | None:
        """sshd, the namespace's first process (the child of `unshare`)."""
        if self.process is None:
            return None
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return None
        return children[0] if children else None

    def processes(self) -> list[psutil.Process]:
        """Every process of this machine (its PID namespace), as this computer numbers them."""
        init = self._init()
        namespace = _namespace(init.pid) if init else None
        if namespace is None:
            return []
        return [p for p in psutil.process_iter() if _namespace(p.pid) == namespace]

    def leftovers(self) -> list[str]:
        """The machine's processes other than its SSH server and the sessions it serves."""
        found = []
        for process in self.processes():
            try:
                if process.name() != "sshd":
                    found.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> None:
        """Kill sshd, the namespace's first process: the kernel then kills everything else inside."""
        if self.process is None:
            return
        init = self._init()
        if init is not None:
            try:
                init.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None
