package disk

import (
	"fmt"
	"log/slog"
	"time"
)

// Config configures a disk tier. Only Root is required.
type Config struct {
	// Root is the directory that holds the tier; it is created if missing.
	Root string
	// Name identifies the tier in errors and Info.Tier; default "disk".
	Name string
	// Budget is the byte budget for blob content (logical sizes); 0 means
	// unbounded.
	Budget int64
	// HighWatermark and LowWatermark are fractions of Budget: when usage
	// passes HighWatermark*Budget a background eviction removes the least
	// recently used blobs until usage is at most LowWatermark*Budget.
	// Defaults 0.95 and 0.85.
	HighWatermark, LowWatermark float64
	// NoEvict turns off the automatic eviction passes (the one Open runs
	// when usage is over the budget and those after Puts), for a process
	// that opens the root only to inspect it: Budget is then reported by
	// Usage but never applied. EvictTo and EvictOlderThan still work.
	NoEvict bool
	// MaxBlob makes Put decline larger blobs with blob.ErrTooLarge.
	// 0 means LowWatermark*Budget, the most that eviction leaves in place
	// (no limit when Budget is 0): a bigger blob would be evicted as soon
	// as it was stored.
	MaxBlob int64
	// FlushInterval is how often buffered last-access updates are written
	// to the index; default 1s. They are also written when FlushThreshold
	// of them are pending (default 1024) and on Close.
	FlushInterval  time.Duration
	FlushThreshold int
	// Logger receives index warnings and reconcile/eviction reports;
	// nil discards them.
	Logger *slog.Logger
	// Now is the clock for last-access times and ref expiry; default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if c.Root == "" {
		return c, fmt.Errorf("disk: Config.Root is empty")
	}
	if c.Name == "" {
		c.Name = "disk"
	}
	if c.Budget < 0 {
		return c, fmt.Errorf("disk: negative Budget %d", c.Budget)
	}
	if c.HighWatermark == 0 {
		c.HighWatermark = 0.95
	}
	if c.LowWatermark == 0 {
		c.LowWatermark = 0.85
	}
	if !(c.LowWatermark > 0 && c.LowWatermark <= c.HighWatermark && c.HighWatermark <= 1) {
		return c, fmt.Errorf("disk: watermarks must satisfy 0 < low (%v) <= high (%v) <= 1", c.LowWatermark, c.HighWatermark)
	}
	if c.MaxBlob < 0 {
		return c, fmt.Errorf("disk: negative MaxBlob %d", c.MaxBlob)
	}
	if c.MaxBlob == 0 {
		c.MaxBlob = int64(c.LowWatermark * float64(c.Budget))
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Second
	}
	if c.FlushThreshold <= 0 {
		c.FlushThreshold = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}
