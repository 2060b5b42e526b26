#!/usr/bin/env bash
# Renders both kustomize overlays of scripts/deploy/k8s offline and validates them: against the
# Kubernetes OpenAPI schemas with PyPI's kubernetes-validate (strict: unknown fields fail), and
# against what the deployment promises (pod security "restricted", probes on /ready and /live,
# the rules file mounted as a directory, the traces volume sized for the rings, the grace period).
#
# Needs `kubectl` with kustomize v4+ built in (kubectl ≥ 1.21; the machine image ships one); when
# missing, Debian's kubernetes-client is tried. kubernetes-validate is installed once into a venv
# under ${PF_VENV:-~/.cache/phantom-fast/venv} (idempotent). No cluster and no network beyond the
# package registries. Prints one `N passed, N failed` line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=scripts/deploy/k8s
venv=${PF_VENV:-$HOME/.cache/phantom-fast/venv}
k8s_version=${K8S_VERSION:-1.30.0}

echo "== revision $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if ! command -v kubectl >/dev/null; then
    echo "kubectl missing: installing Debian's kubernetes-client"
    apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
fi
if ! kubectl kustomize --help >/dev/null 2>&1; then
    echo "kubectl $(kubectl version --client 2>&1 | head -1) has no kustomize: need kubectl >= 1.21" >&2
    exit 1
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
fi
echo "== $(kubectl version --client 2>/dev/null | grep -i kustomize || echo 'kustomize (kubectl)'), kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>&1 | tail -1), schemas $k8s_version"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0
failed=0
check() { # name, command...
    local name=$1
    shift
    if "$@" >"$out/log" 2>&1; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name"
        sed 's/^/     /' "$out/log"
    fi
}

# The validator must be able to fail: a manifest with an unknown field is rejected.
cat >"$out/broken.yaml" <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  containers: [{name: a, image: b, notAField: 1}]
YAML
check "validator rejects an unknown field" \
    bash -c "! '$venv/bin/kubernetes-validate' --strict --quiet -k '$k8s_version' '$out/broken.yaml'"

for overlay in standalone sidecar; do
    check "$overlay renders" sh -c "kubectl kustomize '$root/overlays/$overlay' > '$out/$overlay.yaml'"
    check "$overlay validates against the $k8s_version schemas" \
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out/$overlay.yaml"
    check "$overlay keeps the deployment's promises" "$venv/bin/python" - "$out/$overlay.yaml" "$overlay" <<'PY'
import re, sys, yaml

path, overlay = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)

def size(text):  # 64MiB, 160Mi, 1Gi → bytes
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|KiB|MiB|GiB)?", text)
    unit = {None: 1, "Ki": 1 << 10, "KiB": 1 << 10, "Mi": 1 << 20, "MiB": 1 << 20, "Gi": 1 << 30, "GiB": 1 << 30}
    return int(m.group(1)) * unit[m.group(2)]

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

deployments = [d for d in docs if d["kind"] == "Deployment"]
need(len(deployments) == 1, "one Deployment")
need(("ConfigMap", "phantom-fast-faults") in kinds, "the faults ConfigMap")
dep = deployments[0]
pod = dep["spec"]["template"]["spec"]
psc = pod.get("securityContext", {})
need(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false")
need(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccompProfile RuntimeDefault")
for c in pod["containers"]:
    sc = c.get("securityContext", {})
    need(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation false")
    need(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: drop ALL capabilities")
    need(sc.get("privileged") is not True, f"{c['name']}: not privileged")
pf = [c for c in pod["containers"] if c["name"] == "phantom-fast"]
need(len(pf) == 1, "a phantom-fast container")
pf = pf[0]
args = dict(a[2:].split("=", 1) for a in pf["args"] if a.startswith("--") and "=" in a)
ports = {p["name"]: p["containerPort"] for p in pf["ports"]}
need(args.get("listen") == "0.0.0.0:8080" and ports.get("proxy") == 8080, "proxy on 8080")
need(args.get("admin", "").endswith(":9901") and ports.get("admin") == 9901, "admin on 9901")
for probe, route in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
    get = pf.get(probe, {}).get("httpGet", {})
    need(get.get("path") == route and get.get("port") == "admin", f"{probe} on admin {route}")
ann = dep["spec"]["template"]["metadata"].get("annotations", {})
need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9901",
     "Prometheus scrape annotations on the admin port")
if overlay == "standalone":
    need(args.get("upstream") == "upstream:80", "standalone forwards to the upstream Service")
    need(dep["spec"].get("replicas", 1) >= 2, "standalone runs a pool")
else:
    need(args.get("upstream", "").startswith("127.0.0.1:"), "sidecar forwards to the app on loopback")
    app_port = int(args["upstream"].rsplit(":", 1)[1])
    others = [p["containerPort"] for c in pod["containers"] if c["name"] != "phantom-fast" for p in c.get("ports", [])]
    need(app_port in others, "the app container listens on APPPORT")
services = [d for d in docs if d["kind"] == "Service"]
need(len(services) == 1, "one Service")
svc = services[0]
need(svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items(),
     "the Service selects the pods")
http = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
need(http and http[0]["targetPort"] in ("proxy", 8080), "the Service targets phantom-fast's port")
grace = seconds(args.get("grace", "5s"))
need(pod.get("terminationGracePeriodSeconds", 30) >= grace + 10 + 5 + 1,
     "terminationGracePeriodSeconds above --grace plus the exporter's flush (10 s request + 5 s)")
volumes = {v["name"]: v for v in pod["volumes"]}
mounts = {m["name"]: m for m in pf["volumeMounts"]}
traces = volumes.get("traces", {}).get("emptyDir")
need(traces is not None and mounts.get("traces", {}).get("mountPath") == args.get("trace-dir"),
     "an emptyDir at --trace-dir")
if traces is not None:
    rings = int(args.get("workers", "1")) * size(args.get("trace-capacity", "64MiB"))
    need(size(traces.get("sizeLimit", "0")) >= rings, f"traces emptyDir holds workers x capacity ({rings} B)")
faults = volumes.get("faults", {}).get("configMap", {})
need(faults.get("name") == "phantom-fast-faults", "the faults ConfigMap is a volume")
mount = mounts.get("faults", {})
need("subPath" not in mount, "the rules file mounted as a directory (subPath mounts never update)")
need(args.get("faults-file", "").startswith(mount.get("mountPath", "?") + "/"), "--faults-file inside that mount")
for p in problems:
    print("missing:", p)
sys.exit(1 if problems else 0)
PY
done

# The image's defaults, read from the Dockerfile (no Docker engine runs here).
df=scripts/deploy/Dockerfile
check "Dockerfile: multi-stage release build" grep -q -- "--release --locked" "$df"
check "Dockerfile: distroless runtime, non-root" \
    sh -c "grep -q '^FROM gcr.io/distroless/cc' '$df' && grep -q '^USER 65532' '$df'"
check "Dockerfile: --listen 0.0.0.0:8080 by default" grep -q 'CMD \["--listen", "0.0.0.0:8080"\]' "$df"
check "Dockerfile: traces volume, proxy and admin ports" \
    sh -c "grep -q '^VOLUME' '$df' && grep -q '^EXPOSE 8080 9901' '$df'"

echo "k8s-validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
