package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-oci/strata/blob"
	"github.com/strata-oci/strata/fetcher"
	"github.com/strata-oci/strata/registry/credential"
)

// warmEventsType is the media type of the /v1/warm event stream: one JSON
// warmEvent per line. A client asks for it with an Accept header; a holder
// that predates it ignores the header and answers with one FetchResult,
// which the Client still understands.
const warmEventsType = "application/x-ndjson"

// warmBytesEvery is how often, at most, a layer read in progress reports
// its byte count.
const warmBytesEvery = 100 * time.Millisecond

// Events of the /v1/warm stream, in the order a warm sends them: documents
// once; per layer read, read, then bytes (several) and eof; per layer,
// layer; then result or error, last. A layer read again after a bad copy
// gets a new read id. Clients ignore events they do not know.
const (
	warmEvDocuments = "documents" // Blobs: the index, manifest and config
	warmEvRead      = "read"      // ID, Digest, Size, Source: a layer read starts
	warmEvBytes     = "bytes"     // ID, N: bytes read so far
	warmEvEOF       = "eof"       // ID, N: the read reached the end
	warmEvLayer     = "layer"     // Blobs: the layer's record; or Error, Kind
	warmEvResult    = "result"    // Result
	warmEvError     = "error"     // Error, Kind: the warm failed
)

// warmEvent is one line of the /v1/warm event stream.
type warmEvent struct {
	Event  string        `json:"event"`
	ID     int64         `json:"id,omitempty"`
	Digest string        `json:"digest,omitempty"`
	Size   int64         `json:"size,omitempty"`
	Source string        `json:"source,omitempty"`
	N      int64         `json:"n,omitempty"`
	Blobs  []FetchRecord `json:"blobs,omitempty"`
	Result *FetchResult  `json:"result,omitempty"`
	Error  string        `json:"error,omitempty"`
	Kind   string        `json:"kind,omitempty"`
}

// wantsWarmEvents reports whether the request asks for the event stream.
func wantsWarmEvents(r *http.Request) bool {
	for _, a := range r.Header.Values("Accept") {
		if t, _, err := mime.ParseMediaType(a); err == nil && t == warmEventsType {
			return true
		}
	}
	return false
}

// serveWarmEvents runs the warm of req and streams its progress to w as
// warm events. Once the stream has started, the status is 200 whatever
// happens; a failure is the last event.
func serveWarmEvents(w http.ResponseWriter, r *http.Request, l *Local, req warmRequest, cred credential.Credential) {
	w.Header().Set("Content-Type", warmEventsType)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	send := func(ev warmEvent) {
		mu.Lock()
		defer mu.Unlock()
		// A client that went away cancels the request's context, which
		// ends the warm; write errors need no other handling.
		_ = enc.Encode(ev)
		_ = rc.Flush()
	}
	var ids atomic.Int64
	hooks := &WarmHooks{
		Documents: func(recs []FetchRecord) { send(warmEvent{Event: warmEvDocuments, Blobs: recs}) },
		Reader: func(d blob.Digest, size int64, source string, rd io.Reader) io.Reader {
			id := ids.Add(1)
			send(warmEvent{Event: warmEvRead, ID: id, Digest: d.String(), Size: size, Source: source})
			return &eventReader{r: rd, id: id, send: send}
		},
		Layer: func(l *fetcher.Layer, rec FetchRecord, err error) {
			if err != nil {
				send(warmEvent{Event: warmEvLayer, Blobs: []FetchRecord{{Kind: "layer", Digest: l.Digest().String()}}, Error: err.Error(), Kind: errKind(err)})
				return
			}
			send(warmEvent{Event: warmEvLayer, Blobs: []FetchRecord{rec}})
		},
	}
	res, err := l.Warm(r.Context(), req.Image, cred, req.Parallel, hooks)
	if err != nil {
		send(warmEvent{Event: warmEvError, Error: err.Error(), Kind: errKind(err)})
		return
	}
	send(warmEvent{Event: warmEvResult, Result: res})
}

// eventReader sends the byte count of a layer read as it goes (at most every
// warmBytesEvery) and when it reaches the end.
type eventReader struct {
	r    io.Reader
	id   int64
	send func(warmEvent)
	n    int64
	last time.Time
	eof  bool
}

func (e *eventReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	switch {
	case err == io.EOF && !e.eof:
		e.eof = true
		e.send(warmEvent{Event: warmEvEOF, ID: e.id, N: e.n})
	case n > 0 && time.Since(e.last) >= warmBytesEvery:
		e.last = time.Now()
		e.send(warmEvent{Event: warmEvBytes, ID: e.id, N: e.n})
	}
	return n, err
}

// readWarmEvents reads a warm event stream from body, calling hooks as the
// holder reports (Reader gets a stand-in reader that yields as many zero
// bytes as the holder read, and ends when the holder's read ended), and
// returns the result or the holder's error.
func readWarmEvents(body io.Reader, hooks *WarmHooks) (*FetchResult, error) {
	if hooks == nil {
		hooks = &WarmHooks{}
	}
	reads := map[int64]*remoteRead{}
	dec := json.NewDecoder(body)
	for {
		var ev warmEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("the answer ended before the result: %w", err)
		}
		switch ev.Event {
		case warmEvDocuments:
			if hooks.Documents != nil {
				hooks.Documents(ev.Blobs)
			}
		case warmEvRead:
			d := blob.Digest(ev.Digest)
			if hooks.Reader == nil || blob.ValidateDigest(d) != nil || ev.Size < 0 {
				continue
			}
			rr := &remoteRead{}
			rr.r = hooks.Reader(d, ev.Size, ev.Source, &rr.feed)
			reads[ev.ID] = rr
		case warmEvBytes:
			if rr := reads[ev.ID]; rr != nil {
				rr.advance(ev.N)
			}
		case warmEvEOF:
			if rr := reads[ev.ID]; rr != nil {
				rr.advance(ev.N)
				rr.end()
				delete(reads, ev.ID)
			}
		case warmEvLayer:
			if hooks.Layer == nil || len(ev.Blobs) != 1 {
				continue
			}
			var err error
			if ev.Error != "" {
				err = fromWire(ev.Error, ev.Kind)
			}
			hooks.Layer(nil, ev.Blobs[0], err)
		case warmEvResult:
			if ev.Result == nil {
				return nil, errors.New("the result event carries no result")
			}
			return ev.Result, nil
		case warmEvError:
			return nil, fromWire(ev.Error, ev.Kind)
		}
	}
}

// remoteRead replays a layer read of the holder through the reader a
// Reader hook returned: the hook's reader reads from feed, which yields
// zero bytes as the holder reports them, then io.EOF.
type remoteRead struct {
	r    io.Reader
	feed byteFeed
	n    int64
}

// advance lets the hook's reader read up to total bytes.
func (rr *remoteRead) advance(total int64) {
	if total <= rr.n {
		return
	}
	rr.feed.avail += total - rr.n
	rr.n = total
	_, _ = io.CopyN(io.Discard, rr.r, rr.feed.avail)
}

// end lets the hook's reader see io.EOF.
func (rr *remoteRead) end() {
	rr.feed.eof = true
	var b [512]byte
	for range 4 { // a reader that never passes io.EOF on is not waited for
		if _, err := rr.r.Read(b[:]); err != nil {
			return
		}
	}
}

// byteFeed yields avail zero bytes, then io.EOF once eof is set.
type byteFeed struct {
	avail int64
	eof   bool
}

func (f *byteFeed) Read(p []byte) (int, error) {
	if f.avail == 0 {
		if f.eof {
			return 0, io.EOF
		}
		return 0, nil
	}
	n := min(int64(len(p)), f.avail)
	clear(p[:n])
	f.avail -= n
	return int(n), nil
}
