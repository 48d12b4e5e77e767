// Types of examples/friendly-sam.mjs for TypeScript callers (the tests import it against the sources).
import type * as arena from '../src/kernels/arena/index.js';
import type * as optim from '../src/optim/index.js';

export default function defineFriendlySAM(fg: { arena: typeof arena; optim: typeof optim }): optim.SamVariantClass;
