package main

// The README's screenshot, taken from a real run: the page on a topic, in headless Chromium,
// with values published to it through POST /publish. Every run checks that the page reaches
// the state the picture shows; -update-screenshots also writes the picture.

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

var updateScreenshots = flag.Bool("update-screenshots", false, "write docs/topic.png, the README's screenshot, from the page as TestScreenshot_ leaves it")

// topicScreenshot is the README's picture of the page on a topic.
const topicScreenshot = "docs/topic.png"

func TestScreenshot_TopicPageShowsPublishedValues(t *testing.T) {
	srv := startServer(t)
	// The page is shown under the address the README's quick start opens, not a random port.
	b := newBrowser(t, chromedp.Flag("host-resolver-rules", "MAP "+screenshotHost+" "+strings.TrimPrefix(srv.url, "http://")))
	const width, height = 1280, 800
	if err := chromedp.Do(b.ctx, chromedp.EmulateViewport(width, height)); err != nil {
		t.Fatal(err)
	}

	// What a reader has published before opening the page: the page's first connection
	// asks for the history, so the chart starts with it.
	const before = 40
	var want []string
	for i := range before {
		value := 450 + int(250*math.Sin(float64(i)/5)) + 8*(i%3)
		publishEvent(t, srv.adminURL, "hello", "", map[string]int{"User": value})
		want = append(want, strconv.Itoa(value))
	}
	b.navigate(t, "http://"+screenshotHost+"/?match=hello")
	b.waitForDashboard(t, "the topic's history in the chart", fmt.Sprintf(`d.state === "open" && d.events === %d`, before))

	// The quick start's publish, arriving while the page is open.
	publishEvent(t, srv.adminURL, "hello", "", map[string]int{"User": 500})
	want = append(want, "500")
	d := b.waitForDashboard(t, "the published 500 as the latest value", fmt.Sprintf(`d.events === %d && d.value === "500"`, before+1))
	if d.State != "open" || d.ValueStale || d.Reconnects != 0 || d.Points != before+1 {
		t.Errorf("after the publish: state %q, value stale %t, %d reconnects, %d points; want open, live, 0 and %d", d.State, d.ValueStale, d.Reconnects, d.Points, before+1)
	}
	if got := evaluate[string](t, b, `document.getElementById("chart").dataset.values`); got != strings.Join(want, " ") {
		t.Errorf("chart values = %q, want every value published, in order: %q", got, strings.Join(want, " "))
	}
	if mercure := "http://" + screenshotHost + mercurePath + "?match=hello"; d.Src != mercure {
		t.Errorf("#src = %q, want %q: the README says the page reads the topic through Mercure", d.Src, mercure)
	}

	// The picture shows the top of the page, with no focus ring.
	evaluate[bool](t, b, `(document.activeElement.blur(), scrollTo(0, 0), true)`)
	shot := b.screenshot(t, "topic.png", width, height)
	if *updateScreenshots {
		if err := os.WriteFile(topicScreenshot, shot, 0o644); err != nil {
			t.Fatalf("-update-screenshots: %v", err)
		}
		t.Logf("wrote %s", topicScreenshot)
	}
}
