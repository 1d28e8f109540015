"""Entry-point glue: settings in, one clear line out on failure, exit codes."""

from __future__ import annotations

import os
import sys
import traceback

from loadbench import saving, settings
from loadbench.storage.checkpoint import CheckpointError
from loadbench.libraries import NotInstalled
from loadbench.models import ModelError


def save_main(environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    try:
        cfg = settings.load(env)
        manifest = saving.save_all(cfg, saving.log)
    except (settings.ConfigError, ModelError, NotInstalled, CheckpointError) as e:
        saving.log(f"error: {e}")
        return 2
    except Exception as e:
        traceback.print_exc()
        saving.log(f"error: saving failed: {type(e).__name__}: {e}")
        return 1
    print("\n" + saving.summary(manifest), file=sys.stderr)
    saving.log(f"checkpoint complete: {cfg['MODEL_PATH']}/manifest.json")
    return 0
