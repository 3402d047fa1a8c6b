"""Lesson 06, scale-out: the Swarm stack and its HAProxy (swarm/) and the Kubernetes manifests
(k8s/); scripts/swarm.py deploys the stack."""
