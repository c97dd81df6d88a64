//go:build tools

// The stock pilot-agent, built from this module so one go.sum covers it and istiod (mk/istio.mk).
package main

import _ "istio.io/istio/pilot/cmd/pilot-agent"
