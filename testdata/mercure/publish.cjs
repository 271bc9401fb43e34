// Publishes with the npm mercure package's Publisher: node publish.cjs URL COUNT GAP_MS, with
// the publisher's token in MERCURE_JWT. Update i goes to the topic https://example.com/books/i,
// with its id "book-i" and its data "book i", GAP_MS milliseconds after the one before; each
// answer (the update's id) is printed on a line of its own.
const { Publisher } = require("mercure");

async function main() {
  const [hub, count, gap] = [new URL(process.argv[2]), Number(process.argv[3]), Number(process.argv[4])];
  const publisher = new Publisher({
    protocol: hub.protocol.replace(":", ""),
    host: hub.hostname,
    port: Number(hub.port),
    path: hub.pathname,
    jwt: process.env.MERCURE_JWT,
  });
  for (let i = 0; i < count; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, gap));
    const id = await publisher.publish([`https://example.com/books/${i}`], `book ${i}`, { id: `book-${i}` });
    console.log(id);
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
