// Type-checked (tsc --noEmit --strict, nodenext resolution) against the installed tarball: the `types` condition
// of the package's exports resolves and describes the API, and a wrong call is a type error.
import { Client, type ErrorCode, InvalidUsage, type MeterdError, type Receipt, awsCustomer } from 'meterd';

const client: Client = new Client('127.0.0.1:7171');
export const receipt: Promise<Receipt> = client.recordUsage({ customer: 'acme', dimension: 'api_calls', quantity: 3 });
const aws = awsCustomer('111122223333', 'arn:aws:license-manager::111122223333:license:l-x');
void client.recordUsage({ customer: aws, dimension: 'api_calls', quantity: '0.5' });
// @ts-expect-error a quantity is a string, bigint or number, never a boolean
void client.recordUsage({ customer: 'acme', dimension: 'api_calls', quantity: true });
const err: MeterdError = new InvalidUsage('bad', { field: 'event.quantity' });
export const code: ErrorCode = err.code;
// The streamed report: rows with `rows: true`, groups otherwise; the trailer is typed.
export async function streamed(): Promise<boolean | undefined> {
  const rows = await client.reportStream({ rows: true, since: new Date(0), dimension: 'api_calls' });
  for await (const r of rows) void r.customer;
  const groups = await client.reportStream();
  for await (const g of groups) void g.customers;
  // @ts-expect-error since is a Date, not a string
  void client.reportStream({ since: '2026-11-30' });
  return groups.trailer?.totals.reconciled;
}
