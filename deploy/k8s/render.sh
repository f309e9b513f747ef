#!/usr/bin/env bash
# Render every overlay into deploy/k8s/rendered/<overlay>.yaml (committed: what tests/test_k8s.py
# validates, and what `kubectl apply -f` takes where kustomize is not at hand). Needs kubectl.
set -euo pipefail
cd "$(dirname "$0")"
for overlay in overlays/*/; do
  name=$(basename "$overlay")
  { echo "# Rendered from deploy/k8s/overlays/$name by deploy/k8s/render.sh (kubectl kustomize); do not edit."
    kubectl kustomize "$overlay"; } > "rendered/$name.yaml"
  echo "rendered/$name.yaml"
done
