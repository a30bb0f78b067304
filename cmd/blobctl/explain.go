package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"regexp"
	"strings"
	"syscall"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/manifest"
	"github.com/strata-oci/strata/registry"
	"github.com/strata-oci/strata/registry/credential"
)

// report prints err for a person: "blobctl: " and one sentence saying
// what failed, why, and what to do; with --verbose, the whole error chain
// follows on a "detail:" line. Errors blobctl has no sentence for are
// printed as they are.
func (a *app) report(err error) {
	msg := a.explain(err)
	fmt.Fprintf(a.stderr, "blobctl: %s\n", msg)
	if a.verbose && msg != err.Error() {
		fmt.Fprintf(a.stderr, "  detail: %v\n", err)
	}
}

var (
	// policyDenial finds the address and range in a network policy error
	// ("...: 127.0.0.1 is in 127.0.0.0/8 (allow it ...").
	policyDenial = regexp.MustCompile(`(\S+?) (?:reaches \S+, which )?is in (\S+) \(allow`)
	// platformOffer finds what an index offers in a platform error.
	platformOffer = regexp.MustCompile(`want (\S+); index \S+ offers (.*)$`)
	// httpStatus finds a status the registry answered with.
	httpStatus = regexp.MustCompile(`\(HTTP (\d{3})\)`)
)

// explain returns the sentence report prints for err. The sentence never
// names internals (HTTP methods, Go types, temp files, tier plumbing); the
// flags it suggests are the ones a user types.
func (a *app) explain(err error) string {
	var ue usageError
	var mm *blob.MismatchError
	switch {
	case errors.Is(err, errOutput):
		return a.explainOutput(err)
	case errors.As(err, &ue), errors.Is(err, errLockedNoAdmin):
		return err.Error() // written for people already
	case errors.Is(err, manifest.ErrInvalidPlatform) && a.cfg.Platform == platformAll:
		return "--platform all is for fetch only: other commands need one platform, such as linux/amd64"
	case errors.Is(err, registry.ErrDeniedAddress):
		return a.explainPolicy(err)
	case errors.Is(err, registry.ErrDenied):
		return a.explainDenied(err)
	case errors.Is(err, manifest.ErrNoMatchingPlatform):
		if m := platformOffer.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Sprintf("%s has no image for platform %s (it offers %s): choose one with --platform", a.imageName(), m[1], m[2])
		}
		return fmt.Sprintf("%s has no image for the requested platform: choose another with --platform", a.imageName())
	case a.image != "" && errors.Is(err, blob.ErrNotFound) && !errors.Is(err, blob.ErrMismatch):
		return fmt.Sprintf("%s was not found: the registry %s has no such repository, tag or digest (or hides a private repository from anonymous pulls): check the name, or pass --username and --password-stdin", a.imageName(), a.registryHost())
	case a.image != "" && (errors.Is(err, registry.ErrUnreachable) || errors.Is(err, blob.ErrUnavailable) && strings.Contains(err.Error(), "registry unreachable")):
		return fmt.Sprintf("cannot reach the registry %s (%s): check the name and the network, or try again later", a.registryHost(), unreachableReason(err))
	case isOpaqueXattrDenied(err):
		return "cannot extract the image's layers as a non-root user: overlayfs marks opaque directories with the trusted.overlay.opaque attribute, which only root may set; run as root, or pass --overlay-userxattr (and mount the layers with the userxattr option)"
	case errors.As(err, &mm):
		return fmt.Sprintf("the content read for %s does not match its digest: a cached copy is corrupt (blobctl verify lists corrupt copies, verify --remove drops them so they are fetched again)", mm.Want)
	}
	return err.Error()
}

// imageName is the IMAGE argument, or "the image".
func (a *app) imageName() string {
	if a.image == "" {
		return "the image"
	}
	return a.image
}

// registryHost is the registry of the IMAGE argument.
func (a *app) registryHost() string {
	if r, err := registry.ParseReference(a.image); err == nil {
		return r.Registry()
	}
	return "of " + a.imageName()
}

// explainOutput explains a failed write to stdout.
func (a *app) explainOutput(err error) string {
	why := "the write failed"
	switch {
	case errors.Is(err, syscall.ENOSPC):
		why = "no space left on the device"
	case errors.Is(err, syscall.EPIPE):
		why = "the reading end of the pipe was closed"
	case errors.Is(err, syscall.EIO):
		why = "an I/O error"
	}
	return fmt.Sprintf("could not write the output (%s): the command's work is done but its output is incomplete; make room or send stdout elsewhere", why)
}

// explainPolicy names the address the network policy refused and the flag
// that allows it.
func (a *app) explainPolicy(err error) string {
	m := policyDenial.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Sprintf("the network policy refused to connect to the registry %s (loopback, private and link-local addresses are refused by default): allow its range with --allow-cidr CIDR", a.registryHost())
	}
	ip, cidr := m[1], m[2]
	if i := strings.LastIndexByte(ip, ' '); i >= 0 {
		ip = ip[i+1:]
	}
	return fmt.Sprintf("the network policy refused to connect to the registry %s: its address %s is in %s, which is refused by default; allow it with --allow-cidr %s (or allow-cidr in the config file)", a.registryHost(), ip, cidr, cidr)
}

// explainDenied tells a registry that wants credentials from one that
// rejected the credentials it got: blobctl knows which it sent.
func (a *app) explainDenied(err error) string {
	img, host := a.imageName(), a.registryHost()
	switch a.credentialSource(host) {
	case credential.SourceRequest:
		return fmt.Sprintf("the registry %s rejected the credentials of user %q for %s: check the user name and password, and that this user may pull the repository", host, a.username, img)
	case credential.SourceConfig:
		return fmt.Sprintf("the registry %s rejected the credentials configured for it (credentials in --config) for %s: check them, and that this account may pull the repository", host, img)
	}
	if a.cfg.Keychain {
		return fmt.Sprintf("the registry %s refused to serve %s with the keychain's credentials (or none, if the keychain has none for %s): log in with docker login, or pass --username and --password-stdin", host, img, host)
	}
	return fmt.Sprintf("%s needs credentials: the registry %s refused an anonymous pull; pass --username USER --password-stdin (the password on stdin), or configure credentials for %s in --config", img, host, host)
}

// credentialSource says which credential fetch sent to host: the request's
// (--username), one configured for it, or none (the keychain is not
// consulted here: asking it may run a credential helper).
func (a *app) credentialSource(host string) credential.Source {
	if a.username != "" {
		return credential.SourceRequest
	}
	r, err := credential.New(credential.Config{Registries: a.cfg.Credentials})
	if err != nil {
		return credential.SourceAnonymous
	}
	c, err := r.Resolve(context.Background(), host)
	if err != nil || c.IsAnonymous() {
		return credential.SourceAnonymous
	}
	return c.Source
}

// unreachableReason says in a few words why a registry did not answer.
func unreachableReason(err error) string {
	var dns *net.DNSError
	var errno syscall.Errno
	switch {
	case errors.Is(err, registry.ErrStalled):
		return "it stopped sending data"
	case errors.As(err, &dns):
		if dns.IsNotFound {
			return "no such host"
		}
		return "its name does not resolve"
	case errors.As(err, &errno):
		return errno.Error()
	}
	if m := httpStatus.FindStringSubmatch(err.Error()); m != nil {
		return "it kept answering with server errors, status " + m[1]
	}
	msg := err.Error()
	for _, s := range []string{"connection refused", "connection reset", "no such host", "i/o timeout", "certificate"} {
		if strings.Contains(msg, s) {
			return s
		}
	}
	return "no answer"
}

// isOpaqueXattrDenied reports whether err is the overlay materializer
// failing to set trusted.overlay.opaque without privilege.
func isOpaqueXattrDenied(err error) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && strings.Contains(pe.Op, "trusted.overlay.opaque") &&
		(errors.Is(pe.Err, syscall.EPERM) || errors.Is(pe.Err, syscall.EACCES))
}
