// ESM entry point: the same objects as the CommonJS one.
import meterd from './index.js';

export const {
  Client,
  awsCustomer,
  legacyCustomer,
  MeterdError,
  InvalidUsage,
  Conflict,
  UsageRefused,
  NotFound,
  CustomerNotActive,
  LateUsageRejected,
  AgentUnavailable,
  Timeout,
  InvalidTarget,
  AgentError,
} = meterd;
export default meterd;
