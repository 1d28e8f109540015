"""`python -m loadbench.localjob` is `python -m loadbench.cluster.localjob` (the README's name)."""

import sys

from loadbench.cluster.localjob import (  # noqa: F401
    ConfigMap,
    GPUPool,
    JobPolicy,
    JobResult,
    ManifestError,
    PodRun,
    PodSpec,
    cleanup,
    configmaps_for,
    failure_action,
    load_jobs,
    main,
    pod_command,
    pod_spec,
    read_env_file,
    render_configmap,
    run_job,
)

if __name__ == "__main__":
    sys.exit(main())
