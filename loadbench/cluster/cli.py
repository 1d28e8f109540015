"""collect_results.py: arguments in, a summary out.

Exit codes (loadbench.errors): 0 when at least one document is now in --out
(written or already there), 1 when nothing usable came back or the cluster
could not be reached, 130 when interrupted. Every problem with a pod, a line
or a file is one line on stderr.
"""

from __future__ import annotations

import argparse

from loadbench.cluster import collect as cluster
from loadbench.errors import EXIT_FAILED, EXIT_OK, exit_code
from loadbench.terminal import logger


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="collect_results.py", description=__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-pvc", metavar="CLAIM", help="read the PVC through a helper pod")
    src.add_argument("--from-logs", action="store_true", help="read LOADBENCH_RESULT log lines")
    ap.add_argument("--out", default="results", help="local folder (default: results)")
    ap.add_argument("-n", "--namespace", help="default: the kubeconfig context's, as kubectl")
    ap.add_argument("-l", "--selector", default="app.kubernetes.io/name=loadbench",
                    help="label selector of the benchmark pods (--from-logs)")
    ap.add_argument("--image", help="image for the helper pod (--from-pvc): the loadbench image")
    ap.add_argument("--run-id", default="", help="only this RUN_ID's folder on the PVC")
    ap.add_argument("--sub-path", default="results", help="results folder inside the PVC")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the helper pod")
    ap.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    ap.add_argument("--context")
    args = ap.parse_args(argv)

    progress = logger("collect")

    try:
        api, namespace = cluster.client_api(args.kubeconfig, args.context)
        namespace = args.namespace or namespace
        if args.from_pvc:
            if not args.image:
                ap.error("--from-pvc needs --image (the loadbench image you pushed)")
            report = cluster.from_pvc(api, namespace, args.from_pvc, args.image, args.out,
                                      args.run_id, args.sub_path, args.timeout, progress=progress)
        else:
            report = cluster.from_logs(api, namespace, args.selector, args.out, progress)
    except cluster.CollectError as e:
        progress(f"error: {e}")
        return exit_code(e)
    except KeyboardInterrupt as e:
        progress("interrupted")
        return exit_code(e)
    except Exception as e:  # the API server unreachable, refused, ...: one line, no traceback
        status = getattr(e, "status", None)
        progress(f"error: {type(e).__name__}{f' {status}' if status else ''}: "
                 f"{' '.join(str(getattr(e, 'reason', None) or e).split())[:300]}; check the "
                 "cluster is reachable (kubectl get pods) and your permissions in the namespace")
        return exit_code(e)
    for line in cluster.iter_lines(report):
        progress(line)
    progress(f"done: {report.summary()} in {args.out}")
    return EXIT_OK if (report.written or report.unchanged) else EXIT_FAILED
