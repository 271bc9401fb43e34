// Reads the event stream at process.argv[2] with the npm eventsource package and prints each
// message as one JSON line {"id","data"} until process.argv[3] messages have arrived; "open"
// lines mark each connection, so the test can see the reconnects. With SSE_TOKEN in the
// environment, every request, reconnects included, sends it as Authorization: Bearer.
import { EventSource } from "eventsource";

const [url, want] = [process.argv[2], Number(process.argv[3])];
const token = process.env.SSE_TOKEN;
const es = new EventSource(url, token ? {
  fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } }),
} : {});
let received = 0;
es.onopen = () => console.log(JSON.stringify({ open: true }));
es.onmessage = (e) => {
  console.log(JSON.stringify({ id: e.lastEventId, data: e.data }));
  if (++received === want) {
    es.close();
  }
};
es.addEventListener("reset", (e) => console.log(JSON.stringify({ reset: e.data })));
