// Package deploy holds the tests of the container image (Dockerfile) and the
// Kubernetes manifests (kubernetes/): every manifest decodes strictly into the
// Kubernetes API types, the workloads, Services, PodDisruptionBudgets and
// NetworkPolicy agree with each other and with the butterfly command's real
// flags, and the intermediate's container command line, run here as a
// process, serves and drains.
//
// It is a module of its own so that the Kubernetes and kustomize libraries
// stay out of the Butterfly module; it builds ../cmd/butterfly and runs it.
package deploy
