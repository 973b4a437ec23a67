// Reads JSON lines {hex, txid, tampered} on stdin. For each transaction,
// @stacks/transactions must deserialize it, verify its origin signature,
// serialize it back to the same hex and compute the same txid; a tampered
// one must fail. Prints one JSON summary line: {checked, failures}.
import { deserializeTransaction } from '@stacks/transactions';
import { createInterface } from 'node:readline';

const failures = [];
let checked = 0;
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  checked += 1;
  let outcome;
  try {
    const tx = deserializeTransaction(c.hex);
    tx.verifyOrigin();
    const again = tx.serialize();
    const txid = tx.txid();
    if (again !== c.hex) outcome = `re-serialized differently: ${again}`;
    else if (txid !== c.txid) outcome = `txid ${txid}, expected ${c.txid}`;
    else outcome = 'ok';
  } catch (e) {
    outcome = `rejected: ${e.message}`;
  }
  const good = c.tampered ? outcome !== 'ok' : outcome === 'ok';
  if (!good) failures.push({ index: checked - 1, tampered: c.tampered, outcome, hex: c.hex });
}
console.log(JSON.stringify({ checked, failures }));
