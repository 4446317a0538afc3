module weir.dev/tools/argocd-health

go 1.26

require (
	github.com/yuin/gopher-lua v1.1.1
	sigs.k8s.io/yaml v1.4.0
)
