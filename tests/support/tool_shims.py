"""Stand-ins for `curl` and `jq` where the machine lacks them, for the documentation tests.

The README and the partner guide show shell examples with `curl` and `jq`; their tests run them
as written. CI installs both (`.ci/run`), but `make test` must pass on a machine with only Python
and make, so a missing tool is replaced, for those tests only, by a small script:

* `jq` runs the real jq language (libjq, from the `jq` wheel) with `-r` as the only option;
* `curl` makes the request with httpx, with the options the documents use (`-H`, `-X`, `-d`,
  `--cacert`, `--cert`, `--key`, `--write-out`, `--fail-with-body`, `--silent`,
  `--show-error`); any other option is an error, so a document cannot silently outgrow it.

A warning names each stand-in used, so the test output says so.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

_CURL = """
import ssl
import sys

import httpx

args, i = sys.argv[1:], 0
headers, method, data, url = [], None, None, None
cacert = cert = key = None
write_out, fail_with_body = "", False
while i < len(args):
    a = args[i]
    if a in ("-H", "--header"):
        name, _, value = args[i + 1].partition(":")
        headers.append((name.strip(), value.strip()))
        i += 2
    elif a in ("-X", "--request"):
        method, i = args[i + 1], i + 2
    elif a in ("-d", "--data"):
        data, i = args[i + 1], i + 2
    elif a == "--cacert":
        cacert, i = args[i + 1], i + 2
    elif a == "--cert":
        cert, i = args[i + 1], i + 2
    elif a == "--key":
        key, i = args[i + 1], i + 2
    elif a in ("-w", "--write-out"):
        write_out, i = args[i + 1], i + 2
    elif a == "--fail-with-body":
        fail_with_body, i = True, i + 1
    elif a in ("-s", "--silent", "-S", "--show-error"):
        i += 1
    elif a.startswith("-"):
        sys.exit(f"curl stand-in: unsupported option {a}")
    else:
        url, i = a, i + 1
context = ssl.create_default_context(cafile=cacert)
if cert:
    context.load_cert_chain(cert, key)
if data is not None and not any(n.lower() == "content-type" for n, _ in headers):
    headers.append(("content-type", "application/x-www-form-urlencoded"))
with httpx.Client(verify=context) as client:
    verb = method or ("POST" if data is not None else "GET")
    reply = client.request(verb, url, headers=headers, content=data)
sys.stdout.buffer.write(reply.content)
sys.stdout.write(write_out.replace("\\\\n", "\\n"))
sys.stdout.flush()
if fail_with_body and reply.status_code >= 400:
    sys.stderr.write(f"curl: (22) The requested URL returned error: {reply.status_code}\\n")
    sys.exit(22)
"""

_JQ = """
import json
import sys

import jq

raw, program = False, None
for a in sys.argv[1:]:
    if a in ("-r", "--raw-output"):
        raw = True
    elif a.startswith("-"):
        sys.exit(f"jq stand-in: unsupported option {a}")
    else:
        program = a
for value in jq.compile(program or ".").input_text(sys.stdin.read()).all():
    print(value if raw and isinstance(value, str) else json.dumps(value, indent=2))
"""


def environment(workdir: Path, *, force: bool = False) -> dict[str, str]:
    """The process environment with stand-ins, in ``workdir``, first on PATH for missing tools.

    ``force`` uses the stand-ins even where the tools exist (to test them).
    """
    env = dict(os.environ)
    missing = [tool for tool in ("curl", "jq") if force or shutil.which(tool) is None]
    if not missing:
        return env
    shims = workdir / "tool-shims"
    shims.mkdir(parents=True, exist_ok=True)
    for tool in missing:
        script = shims / tool
        script.write_text(f"#!{sys.executable}\n" + {"curl": _CURL, "jq": _JQ}[tool])
        script.chmod(0o755)
        if not force:
            warnings.warn(
                f"{tool} is not installed: the examples ran with a stand-in ({__name__})", stacklevel=2
            )
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', '')}"
    return env
