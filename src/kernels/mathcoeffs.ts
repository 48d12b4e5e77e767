/**
 * The float32 polynomial coefficients that the WebGPU math prelude (webgpu/wgsl-math-core.ts,
 * wgsl-math.ts) and the wasm SIMD bodies (wasm/module.ts) share, each table written once. They are
 * kept as the decimal text the WGSL carries (a shader's literal must not change with the way
 * JavaScript prints a number); the wasm emitter reads them with Number(). Every table runs from the
 * highest degree down (Horner's order). No imports: both lazily loaded renderers pull in this only.
 */

/** Cephes' expf: e^r = 1 + r + r^2 P(r) on |r| <= ln2/2. */
export const EXP_P = ['1.9875691500e-4', '1.3981999507e-3', '8.3334519073e-3', '4.1665795894e-2', '1.6666665459e-1', '5.0000001201e-1'];

/** expm1(r) = r + r^2/2 + r^3 Q(r) on |r| <= ln2/2 (fitted). */
export const EXPM1_Q = ['2.48220021603629e-05', '1.9892663112841547e-4', '1.3888912508264184e-3', '8.33330862224102e-3', '4.16666679084301e-2', '1.666666716337204e-1'];

/** log(1 + f) - f = f^3 Q(f) - f^2/2 for 1 + f in [sqrt(1/2), sqrt(2)) (fitted). */
export const LOG_TAIL_Q = [
  '0.06869178265333176', '-0.11443391442298889', '0.11707700043916702', '-0.1243194118142128', '0.14247165620326996',
  '-0.1666748821735382', '0.2000078707933426', '-0.25', '0.3333333134651184',
];

/** erf(x) = x P(x^2) for |x| <= 1 (fitted). */
export const ERF_SMALL_P = [
  '7.898209878476337e-05', '-8.024353883229196e-4', '5.19005348905921e-3', '-2.6854809373617172e-2', '1.1283612251281738e-1',
  '-3.761262893676758e-1', '1.128379225730896',
];

/**
 * erfc(a) = e^(-a^2) g(u) / a with u = 1/a: g on three intervals of u ([0.099, 0.5), [0.5, 1),
 * [1, 2]), each a degree-7 polynomial in u minus the interval's centre (fitted).
 */
export const ERFC_TAIL_CENTRES = ['0.2995', '0.75', '1.5'];
export const ERFC_TAIL_G = [
  ['-0.18712586164474487', '0.3222384750843048', '-0.1617853343486786', '-0.08060366660356522', '0.20826001465320587', '-0.13590063154697418', '-0.13446535170078278', '0.5417004823684692'],
  ['-0.0017244694754481316', '-0.016548804938793182', '0.03778878599405289', '-0.050529297441244125', '0.040291670709848404', '0.01934868097305298', '-0.1690809726715088', '0.4681795835494995'],
  ['0.0009309434681199491', '-0.0017106867162510753', '0.002052346710115671', '-0.0011302271159365773', '-0.005932854954153299', '0.03315521776676178', '-0.118398018181324', '0.3595229387283325'],
];

/** Cephes' sinf and cosf on |r| <= pi/4: sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2). */
export const SIN_S = ['-1.9515295891e-4', '8.3321608736e-3', '-1.6666654611e-1'];
export const COS_C = ['2.443315711809948e-5', '-1.388731625493765e-3', '4.166664568298827e-2'];
