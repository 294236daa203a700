"""Shared helpers of the EC2 client suites (tests/ec2/*_suite.py).

Environment (set by tests/tests/ec2_api.rs):
  SG_EC2_ENDPOINT   http://127.0.0.1:PORT of the lab's daemon
  SG_KEY_A, SG_SECRET_A, SG_OWNER_A   owner A's access key
  SG_KEY_B, SG_SECRET_B, SG_OWNER_B   owner B's access key
  SG_AMI            the AMI to launch (namespace instances)

Every check that fails raises; the suite prints `PASS <client> <n> checks` as its
last line only when all passed.
"""

import datetime as _dt
import os
import sys

E = os.environ
ENDPOINT = E["SG_EC2_ENDPOINT"]
KEY_A, SECRET_A, OWNER_A = E["SG_KEY_A"], E["SG_SECRET_A"], E["SG_OWNER_A"]
KEY_B, SECRET_B, OWNER_B = E["SG_KEY_B"], E["SG_SECRET_B"], E["SG_OWNER_B"]
AMI = E.get("SG_AMI", "ami-eca54085")

_checks = 0


def check(cond, what):
    """Count a check; raise with `what` when it fails."""
    global _checks
    if not cond:
        raise AssertionError(what)
    _checks += 1


def done(client):
    print(f"PASS {client} {_checks} checks", flush=True)


def log(*a):
    print(*a, flush=True)


class SkewedClock:
    """Replace `module.datetime` of each of `modules` so that utcnow()/now()
    run `minutes` behind (how a client with a wrong clock signs); restored on
    exit."""

    def __init__(self, modules, minutes):
        self.modules, self.minutes = modules, minutes

    def __enter__(self):
        delta = _dt.timedelta(minutes=self.minutes)

        class Skewed(_dt.datetime):
            @classmethod
            def utcnow(cls):
                return _dt.datetime.utcnow() - delta

            @classmethod
            def now(cls, tz=None):
                return _dt.datetime.now(tz) - delta

        class Mod:
            pass

        for name in dir(_dt):
            if not name.startswith("__"):
                setattr(Mod, name, getattr(_dt, name))
        Mod.datetime = Skewed
        self.saved = [m.datetime for m in self.modules]
        for m in self.modules:
            m.datetime = Mod
        return self

    def __exit__(self, *exc):
        for m, saved in zip(self.modules, self.saved):
            m.datetime = saved
        return False


if __name__ == "__main__":
    sys.exit("a helper module, run a *_suite.py")
