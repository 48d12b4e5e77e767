import { benchCommand } from './bench.js';
import { compareCommand } from './compare.js';
import type { Command } from './define.js';
import { landscapeCommand } from './landscape.js';
import { sharpnessCommand } from './sharpness.js';
import { trainCommand } from './train.js';

export type { Command } from './define.js';
export const COMMANDS: Command[] = [trainCommand, compareCommand, sharpnessCommand, landscapeCommand, benchCommand];
