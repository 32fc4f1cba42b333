"""Set up the reference lifecycle's governance on this machine; safe to run again.

1. export the raw data (the Palmer Penguins table the palmerpenguins package ships, missing values
   and all) to data/raw/penguins.csv;
2. create three demo keys in $CERTUS_HOME/keys (default ~/.certus/keys) if they are missing:
   a data steward, an approver (a different person), a releaser (ECDSA P-256: signs model bundles),
   a deployer (moves registry aliases) and a trainer that also signs ledger checkpoints and is the
   workspace's admin (once the ledger exists, trusting or revoking a key
   is a ledger record an admin key signs). They are UNENCRYPTED demo keys: real keys are
   generated with a passphrase (certus keys generate without --unencrypted), and a real admin
   key is kept apart from the one CI trains with;
3. trust them in trust.json (before the first ledger append, which pins this trust state);
4. track the raw data with DVC and register it (signed manifest, schema-checked);
5. approve it with the approver's key.

After this, `certus repro` runs the lifecycle on approved data and signs its provenance.
"""

import os
import sys

from engine.adapters.keys import make_private_dir
from engine.cli.main import main
from engine.provenance.recorder import keys_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = "data/raw/penguins.csv"
NAME = "penguins-raw"
KEYS = (("demo-steward", "data-steward"), ("demo-approver", "approver"), ("demo-trainer", "trainer"),
        ("demo-releaser", "releaser"), ("demo-deployer", "deployer"))
ECDSA = {"releaser"}  # OMS bundles are signed with ECDSA P-256 (the pipeline's `packages:` step uses this key)
EXTRA_ROLES = {"trainer": ("ledger", "admin")}


def certus(*args: str) -> None:
    code = main(["-C", ROOT, *args])
    if code != 0:
        sys.exit(f"bootstrap: 'certus {' '.join(args)}' failed (exit {code})")


def run() -> None:
    sys.path.insert(0, os.path.join(ROOT, "stages"))
    from ingest import export

    raw = os.path.join(ROOT, RAW)
    if not os.path.exists(raw):
        export("penguins", raw)
        print(f"bootstrap: exported {RAW}")
    make_private_dir(keys_dir())
    for name, role in KEYS:
        if not os.path.exists(os.path.join(keys_dir(), f"{name}.key")):
            kind = ("--type", "ecdsa-p256") if role in ECDSA else ()
            certus("keys", "generate", "--name", name, "--role", role, *kind, "--unencrypted")
    for name, role in KEYS:
        roles = [arg for r in (role, *EXTRA_ROLES.get(role, ())) for arg in ("--role", r)]
        certus("keys", "trust", os.path.join(keys_dir(), f"{name}.pub"), *roles)
    from engine.datasets.registry import Registry

    reg = Registry.load(ROOT)
    if NAME not in reg.entries:
        certus("dataset", "add", RAW, "--name", NAME, "--init", "--key", "demo-steward",
               "--source", "Palmer Penguins raw table (Gorman, Williams & Fraser 2014, Palmer Station LTER) as "
               "shipped in the palmerpenguins package (data/penguins-raw.csv); NA cells written as empty cells",
               "--schema", "conf/schema/penguins.yaml", "--sensitivity", "public", "--retention", "3650d",
               "--license", "CC0-1.0", "--owner", "demo-steward")
        reg = Registry.load(ROOT)
    if reg.resolve(NAME).approval is None:
        certus("dataset", "approve", NAME, "--key", "demo-approver")
    print("bootstrap: governance ready; now run 'certus repro'")


if __name__ == "__main__":
    run()
