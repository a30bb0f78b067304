package registry_test

import "github.com/google/go-containerregistry/pkg/authn"

func basicAuth(user, pass string) authn.Authenticator {
	return &authn.Basic{Username: user, Password: pass}
}
