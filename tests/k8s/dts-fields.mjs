// Unknown-field check for rendered Kubernetes objects. kubernetes-models'
// validators check types and required fields but accept any extra key (the
// API server would drop or reject it: a typo like `readOnlyRootFileSystem`
// silently does nothing). The packages' TypeScript declarations list every
// field, so this reads them: a tiny parser for the subset they use
// (interfaces, object literal types, Array<T>, index signatures, unions,
// type aliases) and a walker that reports every key no declaration knows.
import fs from 'node:fs';
import path from 'node:path';

function tokenize(text) {
  text = text.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
  const tokens = [];
  const re = /\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[A-Za-z_$][\w$]*|\d+(?:\.\d+)?|=>|[{}()<>\[\];:?,|&=.*])/y;
  let m;
  while (re.lastIndex < text.length && (m = re.exec(text))) tokens.push(m[1]);
  return tokens;
}

class Parser {
  constructor(tokens) { this.t = tokens; this.i = 0; }
  peek(k = 0) { return this.t[this.i + k]; }
  next() { return this.t[this.i++]; }
  eat(tok) { if (this.peek() !== tok) throw new Error(`expected ${tok}, got ${this.peek()} at ${this.i}`); this.i++; }
  // type := intersection ('|' intersection)*
  type() {
    if (this.peek() === '|') this.next();
    const alts = [this.intersection()];
    while (this.peek() === '|') { this.next(); alts.push(this.intersection()); }
    return alts.length === 1 ? alts[0] : { kind: 'union', alts };
  }
  intersection() {
    const parts = [this.postfix()];
    while (this.peek() === '&') { this.next(); parts.push(this.postfix()); }
    return parts.length === 1 ? parts[0] : { kind: 'union', alts: parts };
  }
  postfix() {
    let t = this.primary();
    for (;;) {
      if (this.peek() === '[' && this.peek(1) === ']') { this.i += 2; t = { kind: 'array', of: t }; continue; }
      if (this.peek() === '[') { this.next(); this.type(); this.eat(']'); t = { kind: 'any' }; continue; }
      return t;
    }
  }
  primary() {
    const tok = this.next();
    if (tok === '{') return this.members('}');
    if (tok === '(') { const t = this.type(); this.eat(')'); return t; }
    if (tok === 'Array' && this.peek() === '<') { this.next(); const of = this.type(); this.eat('>'); return { kind: 'array', of }; }
    if (/^["']/.test(tok) || /^\d/.test(tok) || ['string', 'number', 'boolean', 'null', 'undefined', 'true', 'false'].includes(tok))
      return { kind: 'scalar' };
    if (tok === 'any' || tok === 'unknown' || tok === 'object') return { kind: 'any' };
    let name = tok;
    while (this.peek() === '.') { this.next(); name += '.' + this.next(); }
    if (this.peek() === '<') { // generic reference: treat as any
      let depth = 0;
      do { const x = this.next(); if (x === '<') depth++; else if (x === '>') depth--; } while (depth > 0);
      return { kind: 'any' };
    }
    return { kind: 'ref', name };
  }
  // members := (prop | index)* '}'
  members(close) {
    const props = new Map();
    let index = null;
    while (this.peek() !== close) {
      if (this.peek() === '[') {
        this.next(); this.next(); this.eat(':'); this.type(); this.eat(']'); this.eat(':');
        index = this.type();
      } else {
        let name = this.next();
        if (/^["']/.test(name)) name = name.slice(1, -1);
        if (this.peek() === '?') this.next();
        this.eat(':');
        props.set(name, this.type());
      }
      if (this.peek() === ';' || this.peek() === ',') this.next();
    }
    this.eat(close);
    return { kind: 'object', props, index };
  }
}

const fileCache = new Map();
function resolveModule(fromFile, spec, root) {
  const base = spec.startsWith('.') ? path.resolve(path.dirname(fromFile), spec)
                                    : path.join(root, 'node_modules', spec);
  for (const candidate of [base + '.d.ts', path.join(base, 'index.d.ts')])
    if (fs.existsSync(candidate)) return candidate;
  return null;
}

// Declarations of one .d.ts file: interfaces and type aliases by every name
// they are exported under, plus its imports.
function loadFile(file, root) {
  if (fileCache.has(file)) return fileCache.get(file);
  const text = fs.readFileSync(file, 'utf8');
  const decls = new Map(), imports = new Map();
  for (const m of text.matchAll(/import\s*\{([^}]*)\}\s*from\s*"([^"]+)"/g))
    for (const part of m[1].split(',')) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (orig) imports.set((alias || orig).trim(), { name: orig.trim(), module: m[2] });
    }
  const tokens = tokenize(text);
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] === 'interface') {
      const p = new Parser(tokens); p.i = i + 1;
      const name = p.next();
      const bases = [];
      if (p.peek() === 'extends') { p.next(); bases.push(p.type()); while (p.peek() === ',') { p.next(); bases.push(p.type()); } }
      p.eat('{');
      const body = p.members('}');
      decls.set(name, { ...body, bases });
      i = p.i - 1;
    } else if (tokens[i] === 'type' && tokens[i - 1] !== 'import' && /^[A-Za-z_]/.test(tokens[i + 1] || '') && tokens[i + 2] === '=') {
      const p = new Parser(tokens); p.i = i + 3;
      try { decls.set(tokens[i + 1], p.type()); } catch { decls.set(tokens[i + 1], { kind: 'any' }); }
      i = p.i - 1;
    }
  }
  for (const m of text.matchAll(/export\s*\{([^}]*)\}\s*;/g))
    for (const part of m[1].split(',')) {
      const [orig, alias] = part.trim().split(/\s+as\s+/);
      if (alias && decls.has(orig.trim())) decls.set(alias.trim(), decls.get(orig.trim()));
    }
  const entry = { decls, imports, file, root };
  fileCache.set(file, entry);
  return entry;
}

function resolveRef(entry, name) {
  if (name === 'TypeMeta') return { type: { kind: 'object', props: new Map([['apiVersion', { kind: 'scalar' }], ['kind', { kind: 'scalar' }]]), index: null }, entry };
  if (entry.decls.has(name)) return { type: entry.decls.get(name), entry };
  const imp = entry.imports.get(name);
  if (!imp) return { type: { kind: 'any' }, entry };
  const file = resolveModule(entry.file, imp.module, entry.root);
  if (!file) return { type: { kind: 'any' }, entry };
  return resolveRef(loadFile(file, entry.root), imp.name);
}

function objectTypes(type, entry, out = []) {
  if (!type) return out;
  if (type.kind === 'ref') { const r = resolveRef(entry, type.name); return objectTypes(r.type, r.entry, out); }
  if (type.kind === 'union') { for (const a of type.alts) objectTypes(a, entry, out); return out; }
  if (type.kind === 'object') out.push({ type, entry });
  if (type.kind === 'any') out.push({ type, entry });
  return out;
}

function walk(value, type, entry, where, errors) {
  if (value === null || typeof value !== 'object') return;
  if (type.kind === 'ref') { const r = resolveRef(entry, type.name); return walk(value, r.type, r.entry, where, errors); }
  if (type.kind === 'any' || type.kind === 'scalar') return;
  if (type.kind === 'array') {
    if (Array.isArray(value)) value.forEach((v, i) => walk(v, type.of, entry, `${where}[${i}]`, errors));
    return;
  }
  if (type.kind === 'union') {
    if (Array.isArray(value)) { const arr = type.alts.find((a) => a.kind === 'array'); if (arr) walk(value, arr, entry, where, errors); return; }
    const objs = objectTypes(type, entry);
    if (objs.length === 0 || objs.some((o) => o.type.kind === 'any')) return;
    return walk(value, objs[0].type, objs[0].entry, where, errors);
  }
  if (type.kind === 'object') {
    const props = new Map(type.props);
    for (const base of type.bases || [])
      for (const o of objectTypes(base, entry)) if (o.type.props) for (const [k, v] of o.type.props) props.set(k, v);
    for (const [key, v] of Object.entries(value)) {
      if (props.has(key)) walk(v, props.get(key), entry, `${where}.${key}`, errors);
      else if (type.index) walk(v, type.index, entry, `${where}.${key}`, errors);
      else errors.push(`${where}.${key}: unknown field`);
    }
  }
}

/// Every key of `object` that the declaration `interfaceName` in `dtsFile`
/// (a path under root/node_modules) does not know, as "path: unknown field".
export function unknownFields(object, dtsFile, interfaceName, root) {
  const entry = loadFile(dtsFile, root);
  const errors = [];
  walk(object, { kind: 'ref', name: interfaceName }, entry, object.kind || '$', errors);
  return errors;
}
