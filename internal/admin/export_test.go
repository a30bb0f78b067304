package admin

import "context"

// For the tests of package admin_test, which open hosts with strata.Open
// (package admin cannot import strata: strata imports it).

// WarmRequest is the /v1/warm body.
type WarmRequest = warmRequest

// WarmEventsType is the media type of a warm event stream.
const WarmEventsType = warmEventsType

// Do sends a request and decodes its JSON answer into out.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	return c.do(ctx, method, path, in, out)
}
