//! Synthetic complaint records like the seed's: a Chinese complaint text holding a person's name,
//! an address, an email and the complaint itself, with the four values as labels.
//!
//! [`Synth::new`]`(seed)` is an infinite iterator of [`SynthRecord`]s, the same records for the
//! same seed (on every platform: it is pure computation over `rand`'s `StdRng`, no files, no
//! clock). [`SynthRecord::to_sft`] gives the record in the shape training reads, with exactly
//! the prompt the extractor sends at inference.
//!
//! The lists (surnames, given-name characters, provinces, districts, complaint templates) are
//! written here rather than taken from a fake-data crate: `fake`'s zh_CN locale has no provinces,
//! districts or buildings, one compound surname and only two-character given names, its current
//! release needs rand 0.10, and the data a seed gives would change whenever its lists do.
//!
//! # Labelling rules
//!
//! Every value is a verbatim substring of the text, non-empty, without line breaks and without
//! surrounding spaces. Fixed rules decide where each value starts and stops, so that a small model
//! can learn them:
//!
//! - **name**: the name only. Labels (`姓名：`, `联系人:`, …), lead-ins (`我是`, `本人`, `我叫`)
//!   and the honorifics `先生`/`女士` that may follow it are outside. A text holds one name;
//!   non-Chinese names (`Li Wei`, `Emily Chen`) keep their inner space.
//! - **address**: the whole address, from the province (or municipality) through the building,
//!   and through the six-digit postcode when one follows (as in the seed,
//!   `宁夏回族自治区璐市城东林街g座 955491`). Labels (`地址：`) and lead-ins (`住在`, `家住`)
//!   are outside.
//! - **email**: the address alone; labels (`邮箱：`, `Email:`) and lead-ins (`我的邮箱是`,
//!   `请回复到`) are outside. A text holds one email.
//! - **question**: the complaint from its first character through its final run of sentence
//!   punctuation (`。`, `！`, `？`, `!`, `?`, e.g. `！！`), or through its last character when it
//!   has none. It may hold inner commas and full stops, never a line break. Outside it: a greeting
//!   before the text (`您好，`), a label (`投诉内容：`), a lead-in (`请问`, `我想问一下`,
//!   `我要投诉：`), and trailing junk after it (emoji, `谢谢！！`, `急！！！`, `~~~`, `[图片]`, stray
//!   letters). `谢谢` never belongs to the question.
//!
//! Parts are joined by separators (`，` `,` `；` `;` `。` spaces, line breaks) that belong to no
//! value; a half-width `.` never separates (it would run into an email).

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::schema::Schema;
use crate::sft::SftRecord;

/// One synthetic record: the text and the four values found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthRecord {
    pub text: String,
    pub name: String,
    pub address: String,
    pub email: String,
    pub question: String,
    pub style: Style,
}

impl SynthRecord {
    /// The values as the model should answer: `json.dumps(obj, ensure_ascii=False)` of
    /// `{"name", "address", "email", "question"}`.
    pub fn output(&self) -> String {
        python_json(&[
            ("name", &self.name),
            ("address", &self.address),
            ("email", &self.email),
            ("question", &self.question),
        ])
    }

    /// The SFT record: the default schema's system prompt, the text as the whole user message,
    /// and [`SynthRecord::output`] as the answer — the prompt the extractor sends at inference.
    pub fn to_sft(&self) -> SftRecord {
        SftRecord {
            system: Some(Schema::default().system_prompt()),
            instruction: String::new(),
            input: Some(self.text.clone()),
            output: Some(self.output()),
        }
    }
}

/// A flat object of strings as Python's `json.dumps(obj, ensure_ascii=False)` writes it:
/// `{"k": "v", "k2": "v2"}`, keys in the given order, non-ASCII as is, `"` `\` and control
/// characters escaped (serde_json escapes strings exactly as Python does).
pub fn python_json(pairs: &[(&str, &str)]) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{}: {}", quote(k), quote(v))).collect();
    format!("{{{}}}", body.join(", "))
}

/// The generator: an infinite iterator of records, deterministic for its seed and styles.
pub struct Synth {
    rng: StdRng,
    styles: Vec<Style>,
}

impl Synth {
    /// Records in every style.
    pub fn new(seed: u64) -> Self {
        Self::with_styles(seed, &Style::ALL)
    }

    /// Records in the given styles only (all of them when `styles` is empty), each drawn with
    /// its usual weight among them.
    pub fn with_styles(seed: u64, styles: &[Style]) -> Self {
        let styles = if styles.is_empty() { Style::ALL.to_vec() } else { styles.to_vec() };
        Self { rng: StdRng::seed_from_u64(seed), styles }
    }
}

impl Iterator for Synth {
    type Item = SynthRecord;

    fn next(&mut self) -> Option<SynthRecord> {
        let style = *self.styles.choose_weighted(&mut self.rng, |s| s.weight()).expect("styles with weights");
        Some(Gen { rng: &mut self.rng }.record(style))
    }
}

// ---------------------------------------------------------------------------------------------
// Lists

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭", "何",
    "高", "林", "郑", "谢", "罗", "梁", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾", "萧", "田",
    "董", "袁", "潘", "于", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "任", "沈", "姚",
    "卢", "姜", "崔", "钟", "谭", "陆", "汪", "范", "金", "石", "廖", "贾", "夏", "韦", "付", "方", "白",
    "邹", "孟", "熊", "秦", "邱", "江", "尹", "薛", "闫", "段", "雷", "侯", "龙", "史", "陶", "黎", "贺",
    "顾", "毛", "郝", "龚", "邵", "万", "钱", "严", "覃", "武", "戴", "莫", "孔", "向", "汤", "常", "温",
    "康", "施", "文", "牛", "樊", "葛", "邢", "安", "齐", "易", "乔", "伍", "庞", "颜", "倪", "庄", "聂",
    "章", "鲁", "岳", "翟", "殷", "詹", "申", "欧", "耿", "关", "兰", "焦", "俞", "左", "柳", "甘", "祝",
];

const COMPOUND_SURNAMES: &[&str] = &[
    "欧阳", "司马", "诸葛", "上官", "慕容", "东方", "皇甫", "尉迟", "公孙", "令狐", "长孙", "宇文",
    "司徒", "夏侯", "轩辕", "端木", "独孤", "南宫", "西门", "百里", "呼延", "澹台",
];

const GIVEN_CHARS: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超",
    "秀", "霞", "平", "刚", "桂", "英", "华", "玉", "萍", "红", "鹏", "辉", "玲", "建", "国", "鑫", "宇",
    "浩", "凯", "健", "俊", "帆", "帅", "旭", "宁", "龙", "林", "欣", "琳", "晨", "雪", "婷", "颖", "倩",
    "阳", "博", "文", "斌", "彬", "丹", "梅", "莉", "兰", "凤", "洁", "慧", "佳", "嘉", "琪", "璐", "瑶",
    "怡", "悦", "雯", "雅", "晶", "晓", "燕", "蕾", "薇", "岚", "露", "思", "梦", "诗", "雨", "晴", "月",
    "春", "秋", "冬", "海", "波", "峰", "山", "松", "柏", "森", "江", "河", "涵", "泽", "润", "清", "源",
    "志", "德", "仁", "义", "礼", "智", "信", "忠", "福", "禄", "寿", "喜", "安", "康", "乐", "荣", "昌",
    "盛", "兴", "隆", "庆", "祥", "瑞", "嘉", "家", "亮", "光", "耀", "辰", "星", "振", "宏", "鸿", "飞",
    "腾", "然", "轩", "睿", "哲", "彤", "萱", "琦", "瑾", "瑜", "璇", "珊", "妍", "婉", "蓉", "芸", "菲",
    "铭", "锋", "钧", "鑫", "淼", "焱", "垚", "昊", "晗", "朗", "毅", "诚", "坤", "全", "成", "义",
];

const PINYIN_SURNAMES: &[&str] = &[
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun", "Ma",
    "Zhu", "Hu", "Guo", "He", "Lin", "Luo", "Gao", "Liang", "Song", "Tang", "Han", "Feng", "Deng",
];

const PINYIN_GIVEN: &[&str] = &[
    "Wei", "Min", "Fang", "Na", "Jing", "Li", "Qiang", "Lei", "Jun", "Yang", "Jie", "Tao", "Ming",
    "Chao", "Xiaoming", "Yuting", "Haoran", "Zihan", "Yifan", "Xinyi", "Jiahui", "Shuang", "Hui",
];

const ENGLISH_GIVEN: &[&str] = &[
    "Emily", "David", "Kevin", "Grace", "Lucy", "Tony", "Jason", "Amy", "Linda", "Eric", "Vivian",
    "Sam", "Alice", "Michael", "Jenny", "Peter", "Cathy", "Leo", "Iris", "Frank", "Helen", "Jack",
];

/// Names in other scripts: Uyghur (given name · father's name), Korean, Japanese.
const UYGHUR_GIVEN: &[&str] = &["买买提", "阿依古丽", "艾尔肯", "古丽娜尔", "热依拉", "吐尔洪", "迪丽拜尔", "艾力"];
const UYGHUR_FATHER: &[&str] = &["艾力", "吐尔逊", "热合曼", "阿不都", "依明", "卡德尔", "司马义"];
const KOREAN_SURNAMES: &[&str] = &["김", "이", "박", "최", "정", "강", "조", "윤"];
const KOREAN_SYLLABLES: &[&str] = &["민", "준", "서", "연", "지", "훈", "수", "아", "현", "우", "영", "진"];
const JAPANESE_SURNAMES: &[&str] = &["山田", "佐藤", "鈴木", "高橋", "田中", "渡辺", "伊藤", "中村"];
const JAPANESE_GIVEN: &[&str] = &["太郎", "さくら", "一郎", "美咲", "健太", "ゆい", "翔", "花子"];

const PROVINCES: &[&str] = &[
    "河北省", "山西省", "辽宁省", "吉林省", "黑龙江省", "江苏省", "浙江省", "安徽省", "福建省", "江西省",
    "山东省", "河南省", "湖北省", "湖南省", "广东省", "海南省", "四川省", "贵州省", "云南省", "陕西省",
    "甘肃省", "青海省", "台湾省", "内蒙古自治区", "广西壮族自治区", "西藏自治区", "宁夏回族自治区",
    "新疆维吾尔自治区", "北京市", "天津市", "上海市", "重庆市", "香港特别行政区", "澳门特别行政区",
];

/// Provinces-level units with no city level under them.
const MUNICIPALITIES: &[&str] =
    &["北京市", "天津市", "上海市", "重庆市", "香港特别行政区", "澳门特别行政区"];

const CITY_NAMES: &[&str] = &[
    "南宁", "长春", "石家庄", "兰州", "西宁", "银川", "太原", "合肥", "南昌", "福州", "昆明", "贵阳",
    "拉萨", "海口", "济南", "郑州", "武汉", "长沙", "成都", "杭州", "南京", "沈阳", "哈尔滨", "呼和浩特",
    "乌鲁木齐", "通辽", "邯郸", "辽阳", "阜新", "齐齐哈尔", "淮安", "六安", "巢湖", "宁德", "荆门", "佛山",
    "潮州", "惠州", "梧州", "柳州", "六盘水", "丽江", "桂林", "宜昌", "洛阳", "绵阳", "大理", "嘉兴",
];

/// Characters for made-up place names, like Faker's `璐市`.
const PLACE_CHARS: &[&str] = &[
    "璐", "兴", "安", "宁", "平", "昌", "阳", "丰", "泰", "华", "明", "凤", "秀", "玉", "海", "春", "金",
    "永", "德", "文", "广", "荣", "瑞", "建", "新", "长", "云", "桂", "梅", "洁", "红", "霞", "杰", "莉",
    "涛", "军", "丹", "静", "鹏", "林", "峰", "波", "东", "西", "南", "北", "坤", "雪", "辉", "刚",
];

const DISTRICTS: &[&str] = &[
    "城东", "城西", "城南", "城北", "西夏", "永川", "秀英", "高港", "清城", "兴山", "锡山", "清河", "龙潭",
    "华龙", "海陵", "滨城", "东丽", "高坪", "沙湾", "平山", "海港", "门头沟", "大东", "南溪", "徐汇",
    "普陀", "朝阳", "海淀", "萧山", "江北", "南岸", "天河", "雁塔", "黄浦", "白云", "金水", "武侯",
    "鼓楼", "江宁", "望城", "新城", "高新", "长安", "和平", "河西", "龙岗", "宝安", "青羊", "历下",
];

const STREET_SUFFIXES: &[&str] = &["路", "路", "街", "街", "大道", "巷", "道", "大街", "北路", "南路"];

const COMMUNITIES: &[&str] = &[
    "阳光花园", "翠苑小区", "幸福里", "金色家园", "锦绣华庭", "滨江花园", "紫荆苑", "和平新村", "书香门第",
    "碧桂园", "万科城", "绿地世纪城", "康乐小区", "东方明珠苑", "桂花园", "丽景湾", "枫林小区", "电力宿舍",
];

/// Rural addresses: a township (`镇`, `乡`) and a village (`村`) under a county.
const TOWNSHIP_SUFFIXES: &[&str] = &["镇", "镇", "乡"];
const VILLAGE_SUFFIXES: &[&str] = &["村", "村", "庄村", "家村"];

const SAFE_DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];
const FREE_DOMAINS: &[&str] = &[
    "qq.com", "163.com", "126.com", "gmail.com", "hotmail.com", "outlook.com", "sina.com", "foxmail.com",
    "yahoo.com", "139.com", "sohu.com", "yeah.net", "aliyun.com",
];

const SYLLABLES: &[&str] = &[
    "an", "bo", "chen", "dan", "fan", "fang", "gang", "hao", "hui", "jia", "jie", "jing", "jun", "kai",
    "lei", "li", "lin", "ling", "liu", "long", "mei", "min", "ming", "na", "ning", "peng", "qing", "rui",
    "shan", "tao", "ting", "wei", "wen", "xia", "xin", "xiu", "yan", "yang", "yi", "ying", "yu", "yun",
    "zhang", "zhao", "zhen", "zhou", "zi", "wang", "huang", "xu", "guo", "he", "luo", "song",
];

const ENGLISH_WORDS: &[&str] = &[
    "sunny", "happy", "blue", "cat", "tiger", "star", "moon", "cloud", "apple", "lucky", "rain", "panda",
    "coffee", "river", "snow", "king", "angel", "dream", "smile", "rock",
];

// Complaint pieces. `{dur}` etc. are filled by `Gen::fill`.

struct Category {
    problems: &'static [&'static str],
    impacts: &'static [&'static str],
    demands: &'static [&'static str],
}

const CATEGORIES: &[Category] = &[
    // 物业 / 垃圾
    Category {
        problems: &[
            "小区垃圾堆积成山", "楼道里的垃圾{dur}没人清理", "小区绿化带被物业改成了停车位", "物业费{year}又涨了",
            "小区大门的门禁坏了{dur}", "物业一直不处理楼道堆放的杂物", "小区路灯坏了{dur}没人修",
        ],
        impacts: &["物业一直不处理", "臭气熏天", "找了物业好几次都没人管", "业主意见很大", "晚上出门很不安全"],
        demands: &["希望尽快解决", "请物业给个说法", "请相关部门督促物业整改", "希望有人来管一管"],
    },
    // 停水
    Category {
        problems: &[
            "我们小区{when}突然停水", "家里自来水{dur}都是黄色的", "小区停水{dur}了也没有任何通知",
            "水压太低，{floor}楼以上根本用不了水", "水费账单比上个月多了{money}",
        ],
        impacts: &["做饭洗澡都成问题", "家里老人孩子没法生活", "打客服电话一直没人接"],
        demands: &["请尽快恢复供水", "希望自来水公司给个解释", "什么时候能恢复正常"],
    },
    // 停电
    Category {
        problems: &[
            "我家{when}突然停电", "小区{dur}停了三次电", "电费{month}比平时多了{money}", "楼里的电表箱一直冒火花",
        ],
        impacts: &["冰箱里的东西都坏了", "孩子没法写作业", "供电所说不归他们管", "存在很大的安全隐患"],
        demands: &["请供电公司尽快处理", "希望给个合理的解释", "要求核查电表", "什么时候能解决"],
    },
    // 燃气
    Category {
        problems: &[
            "家里燃气表{dur}读数不准", "楼道里一直有燃气味", "燃气公司上门安检收了{money}检测费",
            "燃气{when}突然停了也没通知",
        ],
        impacts: &["担心会出事", "做不了饭", "打电话没人处理"],
        demands: &["请燃气公司尽快派人检查", "要求退还费用", "希望尽快处理"],
    },
    // 宽带
    Category {
        problems: &[
            "我家宽带{dur}断网", "{carrier}宽带网速只有套餐的一半", "宽带到期后被自动续费了{money}",
            "报修宽带{dur}了还没人上门",
        ],
        impacts: &["在家办公受到严重影响", "孩子上网课都上不了", "客服只会让重启光猫"],
        demands: &["请尽快派人维修", "要求退还多收的费用", "希望给个处理结果", "到底什么时候能修好"],
    },
    // 话费 / 账单
    Category {
        problems: &[
            "{carrier}上个月多扣了我{money}话费", "手机莫名其妙被开通了增值业务", "话费账单里有一笔{money}的不明扣费",
            "套餐说好{money}一个月，实际每月扣费更多",
        ],
        impacts: &["我从来没有办理过", "营业厅说查不到原因", "客服一直推脱"],
        demands: &["要求退还多扣的话费", "请给个明确的说法", "多扣的钱什么时候退还"],
    },
    // 快递
    Category {
        problems: &[
            "{courier}快递{dur}了还没送到", "快递被放在门口丢了", "{courier}快递员没打电话就签收了我的包裹",
            "收到的快递外包装破损，里面东西摔坏了",
        ],
        impacts: &["物流信息一直不更新", "客服只会让我等", "网点电话打不通"],
        demands: &["要求赔偿损失", "请尽快核实处理", "希望快递公司给个说法", "包裹到底去哪了"],
    },
    // 噪音
    Category {
        problems: &[
            "楼下烧烤店{when}还很吵", "小区广场舞音响声音太大", "附近工地{when}还在施工", "楼上邻居{when}经常蹦跳",
        ],
        impacts: &["严重影响休息", "老人孩子根本睡不着", "报警了也没用"],
        demands: &["请相关部门管一管", "希望尽快处理", "能不能管一管"],
    },
    // 装修
    Category {
        problems: &[
            "装修公司收了{money}定金后不开工", "装修工程拖了{dur}还没完工", "隔壁装修{when}也在电钻",
            "新装修的卫生间漏水到楼下",
        ],
        impacts: &["联系负责人一直推脱", "影响了全家的正常生活", "合同写的工期早就过了"],
        demands: &["要求退还定金", "请尽快处理", "希望监管部门介入"],
    },
    // 电梯
    Category {
        problems: &[
            "我们楼的电梯{dur}坏了三次", "电梯{when}把人困在里面", "电梯停运{dur}了没人修",
        ],
        impacts: &["{floor}楼的老人上下楼非常困难", "物业说维修要等配件", "太危险了"],
        demands: &["请尽快安排维修", "希望加强电梯维保", "什么时候能修好"],
    },
    // 供暖
    Category {
        problems: &[
            "家里暖气{dur}都不热", "供暖费交了{money}，室温只有十几度", "暖气管道漏水把地板泡坏了",
        ],
        impacts: &["家里老人冻感冒了", "热力公司一直不派人", "晚上冷得睡不着"],
        demands: &["请热力公司尽快处理", "要求退还部分供暖费", "希望尽快解决"],
    },
    // 网购退款
    Category {
        problems: &[
            "在{shop}买的东西申请退款{dur}还没到账", "网购的手机收到是翻新机", "商家发错了货却不给退换",
            "{shop}上买的衣服质量很差，商家拒绝退货",
        ],
        impacts: &["商家一直不回消息", "平台客服也不处理", "花了{money}买了个教训"],
        demands: &["要求全额退款", "请平台介入处理", "钱什么时候能退回来"],
    },
    // 停车
    Category {
        problems: &[
            "小区停车费{year}从每月{money}涨了", "车位被外来车辆长期占用", "停车场多收了我{money}停车费",
        ],
        impacts: &["物业不管不问", "找了好几次也没结果"],
        demands: &["希望给个合理的解释", "请尽快处理", "要求退还多收的费用"],
    },
    // 公交
    Category {
        problems: &[
            "{bus}路公交车经常不到站就走", "{bus}路公交{when}等了一个多小时都没来", "公交司机态度恶劣",
        ],
        impacts: &["上班经常迟到", "乘客意见很大"],
        demands: &["希望公交公司加强管理", "请尽快整改", "能不能增加班次"],
    },
    // 餐饮
    Category {
        problems: &[
            "在楼下饭店吃饭吃出了头发", "外卖送到已经凉了还洒了一半", "超市卖过期食品", "餐馆后厨卫生很差",
        ],
        impacts: &["吃完肚子疼了一晚上", "商家拒不承认", "平台不给退款"],
        demands: &["请食品监管部门查一查", "要求赔偿", "希望严肃处理"],
    },
    // 房屋质量
    Category {
        problems: &[
            "新交的房子墙面开裂", "房子交付{dur}了还没拿到房产证", "楼顶漏水导致家里天花板发霉", "开发商延期交房{dur}",
        ],
        impacts: &["开发商一直拖着不修", "每次下雨都要拿盆接水", "贷款每个月照还"],
        demands: &["要求开发商尽快维修", "请住建部门介入", "希望给个明确答复"],
    },
];

const DURATIONS: &[&str] = &[
    "三天", "一个星期", "两个星期", "半个月", "一个多月", "两个月", "好几天", "快一周", "整整十天", "大半年",
];
const WHENS: &[&str] = &[
    "每天晚上", "凌晨两点", "周末", "昨天下午", "半夜", "每天早上六点", "这几天", "最近一周", "今天一早",
];
const MONTHS: &[&str] = &["这个月", "上个月", "最近两个月"];
const YEARS: &[&str] = &["今年", "去年", "最近"];
const CARRIERS: &[&str] = &["移动", "联通", "电信", "广电", "长城宽带"];
const COURIERS: &[&str] = &["顺丰", "中通", "圆通", "韵达", "申通", "京东", "极兔", "邮政"];
const SHOPS: &[&str] = &["淘宝", "京东", "拼多多", "抖音商城", "唯品会", "网店"];

/// What a complaint may end with (`…`/`……` as a trailing-off ending).
const SENTENCE_END: [char; 6] = ['。', '！', '？', '!', '?', '…'];

/// Lead-ins before the complaint; never part of the question.
const QUESTION_LEADINS: &[&str] = &["请问", "我想问一下", "我要投诉：", "想反映一下，", "反映个问题："];
const QUESTION_LABELS: &[&str] = &["投诉内容", "问题", "反映问题", "诉求", "投诉事项"];
const GREETINGS: &[&str] = &[
    "您好，", "你好，", "您好！", "你好！", "投诉：", "【投诉】", "领导好，", "Hi，", "hello ", "你好😊", "您好～",
];
const JUNK: &[&str] = &[
    "😡", "😡😡😡", "🙏", "🙏🙏", "😭", "👍", "💢", "谢谢！！", "谢谢", "谢谢了", "急！！！", "急急急", "~~~",
    "asdf", "[图片]", "[语音]", "[捂脸]", "#投诉#", "[抱拳]", "谢谢🙏", "在线等", "xx", "qwe",
];

/// Letters: salutations before the complaint, sign-offs that carry the name (`{name}`).
const SALUTATIONS: &[&str] = &[
    "尊敬的领导：\n", "尊敬的领导，您好！\n", "您好：\n", "物业负责人您好，\n", "相关部门领导：\n", "致12345热线：\n",
    "尊敬的工作人员：", "领导您好！",
];
const SIGN_OFFS: &[&str] = &[
    "此致\n敬礼！\n投诉人：{name}", "此致敬礼！ 投诉人：{name}", "—— {name}", "——{name}", "{name} 敬上", "{name}\n{date}",
    "署名：{name}", "反映人：{name}\n{date}", "谢谢！\n{name}", "业主 {name}",
];
const ENGLISH_NAME_LABELS: &[&str] = &["Name", "Full name", "Contact", "Customer", "NAME"];
const ENGLISH_ADDRESS_LABELS: &[&str] = &["Address", "Home address", "Addr", "ADDRESS", "Location"];
const ENGLISH_EMAIL_LABELS: &[&str] = &["Email", "E-mail", "Mail", "Contact email", "EMAIL"];
const ENGLISH_QUESTION_LABELS: &[&str] = &["Issue", "Complaint", "Problem", "Details", "Description", "Message"];
/// How an English label meets its value.
const ENGLISH_COLONS: &[&str] = &[": ", ":", " - ", "：", " = "];
/// Bracket styles around a label (`{}` the label), or a slash, bar or tab after it.
const BRACKETS: &[&str] = &["【{}】", "[{}]", "（{}）", "({})", "<{}>", "「{}」", "{}/", "{}|", "{}\t", "【{}】：", "[{}]: "];
/// Row separators for values without labels.
const ROW_SEPARATORS: &[&str] = &["\t", " | ", " / ", "｜", "\t\t", " ; "];

const NAME_LABELS: &[&str] = &["姓名", "名字", "联系人", "投诉人", "称呼", "Name"];
const NAME_LEADINS: &[&str] = &["我是", "本人", "我叫", "我是业主"];
const ADDRESS_LABELS: &[&str] = &["地址", "住址", "联系地址", "家庭住址", "Address"];
const ADDRESS_LEADINS: &[&str] = &["住在", "家住", "我家在", "我住", "地址是"];
const EMAIL_LABELS: &[&str] = &["邮箱", "Email", "E-mail", "电子邮件", "邮件", "联系邮箱", "email"];
const EMAIL_LEADINS: &[&str] = &["我的邮箱是", "请回复到", "回复请发到", "邮箱是", "有结果请发邮件到", "结果请发"];

// ---------------------------------------------------------------------------------------------
// Generation

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    Name,
    Address,
    Email,
    Question,
}

/// How a text introduces its fields. [`Synth::with_styles`] draws from some of them, so that a
/// model can be measured on styles it never saw in training.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Style {
    /// The seed's: bare name and address, `邮箱 x`, then the complaint.
    Seed,
    /// A form: every field labelled with a colon, usually one per line.
    Form,
    /// Each field introduced its own way (a label, a lead-in or nothing).
    Free,
    /// A letter: a salutation, the complaint in several sentences, the contact details, and a
    /// sign-off that carries the name (`此致 敬礼！投诉人：龙琳`, `—— 龙琳`).
    Letter,
    /// English labels (`Name:`, `Address -`, `E-mail:`, `Issue:`) around the Chinese values.
    English,
    /// Labels in brackets or before a slash or tab: `【姓名】龙琳`, `[地址] …`, `邮箱/x@y.z`.
    Bracket,
    /// No labels: the four values in a row separated by tabs, ` | ` or ` / `, as pasted from a
    /// spreadsheet.
    Row,
}

impl Style {
    pub const ALL: [Style; 7] = [Style::Seed, Style::Form, Style::Free, Style::Letter, Style::English, Style::Bracket, Style::Row];
    /// What the quickstart holds out of training by default and measures separately.
    pub const HELD_OUT: [Style; 2] = [Style::Bracket, Style::Row];

    pub fn name(self) -> &'static str {
        match self {
            Style::Seed => "seed",
            Style::Form => "form",
            Style::Free => "free",
            Style::Letter => "letter",
            Style::English => "english",
            Style::Bracket => "bracket",
            Style::Row => "row",
        }
    }

    /// A style by [`Style::name`]; the error lists the names.
    pub fn parse(name: &str) -> Result<Style, String> {
        Style::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            format!("unknown style `{name}`; the styles are {}", Style::ALL.map(Style::name).join(", "))
        })
    }

    /// A comma-separated list of [`Style::name`]s; `all` is every style, `none` (or nothing) none.
    pub fn parse_list(list: &str) -> Result<Vec<Style>, String> {
        match list.trim() {
            "all" => Ok(Style::ALL.to_vec()),
            "none" => Ok(Vec::new()),
            // An empty value is more likely a shell variable left unset than a choice of none.
            "" => Err("empty: name styles, `all` or `none`".into()),
            list => list.split(',').map(|s| Style::parse(s.trim())).collect(),
        }
    }

    /// How often it is drawn among the styles asked for.
    fn weight(self) -> u32 {
        match self {
            Style::Seed => 3,
            Style::Form => 2,
            Style::Free => 5,
            Style::Letter | Style::English | Style::Bracket | Style::Row => 1,
        }
    }
}

struct Gen<'a> {
    rng: &'a mut StdRng,
}

impl Gen<'_> {
    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        *list.choose(self.rng).expect("non-empty list")
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|i| char::from(b'0' + self.rng.random_range(if i == 0 { 1 } else { 0 }..10u8))).collect()
    }

    fn name(&mut self) -> String {
        if self.chance(0.05) {
            return match self.rng.random_range(0..3) {
                0 => format!("{}·{}", self.pick(UYGHUR_GIVEN), self.pick(UYGHUR_FATHER)),
                1 => {
                    let n = self.rng.random_range(1..3);
                    let given: String = (0..n).map(|_| self.pick(KOREAN_SYLLABLES)).collect();
                    format!("{}{given}", self.pick(KOREAN_SURNAMES))
                }
                _ => format!("{}{}", self.pick(JAPANESE_SURNAMES), self.pick(JAPANESE_GIVEN)),
            };
        }
        if self.chance(0.08) {
            return if self.chance(0.5) {
                format!("{} {}", self.pick(PINYIN_SURNAMES), self.pick(PINYIN_GIVEN))
            } else {
                format!("{} {}", self.pick(ENGLISH_GIVEN), self.pick(PINYIN_SURNAMES))
            };
        }
        let surname = if self.chance(0.08) { self.pick(COMPOUND_SURNAMES) } else { self.pick(SURNAMES) };
        let mut name = surname.to_string();
        name.push_str(self.pick(GIVEN_CHARS));
        if self.chance(0.35) {
            name.push_str(self.pick(GIVEN_CHARS));
        }
        name
    }

    fn place(&mut self) -> String {
        let n = if self.chance(0.6) { 1 } else { 2 };
        (0..n).map(|_| self.pick(PLACE_CHARS)).collect()
    }

    fn address(&mut self) -> String {
        if self.chance(0.15) {
            return self.rural_address();
        }
        let province = self.pick(PROVINCES);
        let mut a = province.to_string();
        if !MUNICIPALITIES.contains(&province) {
            let city = if self.chance(0.5) { self.pick(CITY_NAMES).to_string() } else { self.place() };
            a.push_str(&city);
            a.push_str(if self.chance(0.85) { "市" } else { "县" });
        }
        a.push_str(self.pick(DISTRICTS));
        if self.chance(0.6) {
            a.push('区');
        }
        let street = self.place();
        a.push_str(&street);
        a.push_str(self.pick(STREET_SUFFIXES));
        if self.chance(0.45) {
            a.push_str(&format!("{}号", self.rng.random_range(1..400)));
        }
        if self.chance(0.3) {
            a.push_str(self.pick(COMMUNITIES));
        }
        let letter = char::from(b'a' + self.rng.random_range(0..26u8));
        let building = match self.rng.random_range(0..7) {
            0 | 1 => format!("{letter}座"),
            2 => format!("{}座{}{:02}室", letter.to_ascii_uppercase(), self.rng.random_range(1..30), self.rng.random_range(1..12)),
            3 => format!("{}栋{}0{}室", self.rng.random_range(1..30), self.rng.random_range(1..25), self.rng.random_range(1..8)),
            4 => format!(
                "{}号楼{}单元{}0{}",
                self.rng.random_range(1..20),
                self.rng.random_range(1..6),
                self.rng.random_range(1..30),
                self.rng.random_range(1..6)
            ),
            5 => format!("{}幢{}室", self.rng.random_range(1..40), self.rng.random_range(101..1900)),
            _ => String::new(),
        };
        a.push_str(&building);
        if self.chance(0.4) {
            if self.chance(0.8) {
                a.push(' ');
            }
            a.push_str(&self.digits(6));
        }
        a
    }

    /// A county's township and village, maybe a group (`组`) or house number, maybe a postcode.
    fn rural_address(&mut self) -> String {
        let province = *PROVINCES[..PROVINCES.len() - MUNICIPALITIES.len()].choose(self.rng).expect("non-empty");
        let mut a = province.to_string();
        if self.chance(0.6) {
            let city = if self.chance(0.5) { self.pick(CITY_NAMES).to_string() } else { self.place() };
            a.push_str(&city);
            a.push('市');
        }
        let county = self.place();
        a.push_str(&county);
        a.push('县');
        let town = self.place();
        a.push_str(&town);
        a.push_str(self.pick(TOWNSHIP_SUFFIXES));
        let village = self.place();
        a.push_str(&village);
        a.push_str(self.pick(VILLAGE_SUFFIXES));
        match self.rng.random_range(0..3) {
            0 => a.push_str(&format!("{}组", self.rng.random_range(1..13))),
            1 => a.push_str(&format!("{}号", self.rng.random_range(1..200))),
            _ => {}
        }
        if self.chance(0.3) {
            if self.chance(0.7) {
                a.push(' ');
            }
            a.push_str(&self.digits(6));
        }
        a
    }

    fn email(&mut self) -> String {
        let user = match self.rng.random_range(0..6) {
            0 => format!("{}{}", self.pick(SYLLABLES), self.pick(SYLLABLES)),
            1 => format!("{}{}{}", self.pick(SYLLABLES), self.pick(SYLLABLES), self.rng.random_range(1..2000)),
            2 => format!("{}.{}", self.pick(SYLLABLES), self.pick(SYLLABLES)),
            3 => format!("{}_{}", self.pick(ENGLISH_WORDS), self.rng.random_range(1..100)),
            4 => format!("{}{}", self.pick(ENGLISH_WORDS), self.pick(SYLLABLES)),
            _ => {
                let n = self.rng.random_range(6..11);
                self.digits(n)
            }
        };
        let domain = if user.bytes().all(|b| b.is_ascii_digit()) {
            "qq.com"
        } else if self.chance(0.35) {
            self.pick(SAFE_DOMAINS)
        } else {
            self.pick(FREE_DOMAINS)
        };
        format!("{user}@{domain}")
    }

    fn fill(&mut self, template: &str) -> String {
        let mut out = template.to_string();
        while let Some(start) = out.find('{') {
            let end = start + out[start..].find('}').expect("closed slot");
            let value = match &out[start + 1..end] {
                "dur" => self.pick(DURATIONS).to_string(),
                "when" => self.pick(WHENS).to_string(),
                "month" => self.pick(MONTHS).to_string(),
                "year" => self.pick(YEARS).to_string(),
                "carrier" => self.pick(CARRIERS).to_string(),
                "courier" => self.pick(COURIERS).to_string(),
                "shop" => self.pick(SHOPS).to_string(),
                "money" => match self.rng.random_range(0..3) {
                    0 => format!("{}元", self.rng.random_range(5..300)),
                    1 => format!("{}.{}元", self.rng.random_range(1..100), self.rng.random_range(1..10)),
                    _ => format!("{}块钱", self.rng.random_range(20..2000)),
                },
                "floor" => self.rng.random_range(6..33).to_string(),
                "bus" => self.rng.random_range(1..400).to_string(),
                other => panic!("unknown slot {other}"),
            };
            out.replace_range(start..=end, &value);
        }
        out
    }

    /// The complaint: problem, maybe an impact, maybe a demand, and its final punctuation. With
    /// `sentences`, each of the three its own sentence (a letter's complaint).
    fn question(&mut self, half: f64, sentences: bool) -> String {
        let cat = &CATEGORIES[self.rng.random_range(0..CATEGORIES.len())];
        let problem = self.pick_str(cat.problems);
        let mut q = self.fill(problem);
        let comma = if self.chance(half) { "," } else { "，" };
        let stop = |g: &mut Self| if g.chance(0.8) { "。" } else { "！" };
        if sentences || self.chance(0.35) {
            let sep = if sentences { stop(self) } else { comma };
            q.push_str(sep);
            let impact = self.pick_str(cat.impacts);
            let impact = self.fill(impact);
            q.push_str(&impact);
        }
        let mut asks = false;
        if sentences || self.chance(0.5) {
            q.push_str(if sentences { stop(self) } else if self.chance(0.7) { comma } else { "。" });
            let demand = self.pick_str(cat.demands);
            asks = demand.starts_with("什么") || demand.contains("什么时候") || demand.starts_with("能不能")
                || demand.starts_with("到底") || demand.contains("去哪");
            q.push_str(demand);
        }
        let end = if asks {
            [("？", 6), ("?", 2), ("", 1)].choose_weighted(self.rng, |e| e.1).expect("weights").0
        } else {
            [("。", 10), ("！", 4), ("！！", 1), ("!", 1), ("…", 1), ("……", 1), ("", 3)].choose_weighted(self.rng, |e| e.1).expect("weights").0
        };
        q.push_str(end);
        q
    }

    fn pick_str(&mut self, list: &'static [&'static str]) -> &'static str {
        self.pick(list)
    }

    fn colon(&mut self, half: f64) -> &'static str {
        match (self.chance(half), self.chance(0.2)) {
            (false, false) => "：",
            (false, true) => "： ",
            (true, false) => ":",
            (true, true) => ": ",
        }
    }

    fn separator(&mut self, half: f64, form: bool, no_stop: bool) -> String {
        let sep = if form {
            [("\n", 8), ("；", 2), ("，", 1), ("  ", 1)].choose_weighted(self.rng, |e| e.1).expect("weights").0
        } else {
            let stop = if no_stop { 0 } else { 8 };
            let full = [("，", 40), ("；", 6), ("。", stop), (" ", 10), ("\n", 10), ("\n\n", 2), ("  ", 2)]
                .choose_weighted(self.rng, |e| e.1)
                .expect("weights")
                .0;
            if self.chance(half) {
                match full {
                    "，" => if self.chance(0.5) { "," } else { ", " },
                    "；" => ";",
                    other => other,
                }
            } else {
                full
            }
        };
        let mut s = sep.to_string();
        if !sep.contains(' ') && self.chance(0.06) {
            s.push(' ');
        }
        s
    }

    fn record(&mut self, style: Style) -> SynthRecord {
        let name = self.name();
        let address = self.address();
        let email = self.email();
        // How often this text uses half-width punctuation.
        let half = *[0.0, 0.0, 0.0, 0.15, 0.5, 0.9].choose(self.rng).expect("non-empty");
        let sentences = style == Style::Letter || self.chance(0.1);
        let question = self.question(half, sentences);
        if style == Style::Letter {
            let text = self.letter(&name, &address, &email, &question, half);
            return SynthRecord { text, name, address, email, question, style };
        }

        use Part::*;
        let order: [Part; 4] = match self.rng.random_range(0..20) {
            0..=9 => [Name, Address, Email, Question],
            10 | 11 => [Name, Email, Address, Question],
            12 => [Name, Address, Question, Email],
            13 => [Name, Question, Address, Email],
            14 | 15 => [Question, Name, Address, Email],
            16 => [Question, Name, Email, Address],
            17 => [Address, Name, Email, Question],
            18 => [Email, Name, Address, Question],
            _ => {
                let mut o = [Name, Address, Email, Question];
                use rand::seq::SliceRandom;
                o.shuffle(self.rng);
                o
            }
        };
        // One way of labelling and separating for the whole text, as a person or a form would.
        let row_sep = self.pick(ROW_SEPARATORS);
        let bracket = self.pick(BRACKETS);
        let english_colon = self.pick(ENGLISH_COLONS);
        let english_in_brackets = self.chance(0.3);
        let labelled = matches!(style, Style::Form | Style::English | Style::Bracket);

        let mut text = String::new();
        if self.chance(0.03) {
            text.push(' ');
        }
        if style != Style::Row && self.chance(0.25) {
            text.push_str(self.pick(GREETINGS));
        }
        let mut honorific_used = false;
        for (i, part) in order.iter().enumerate() {
            if i > 0 {
                let after_sentence = order[i - 1] == Question && question.ends_with(SENTENCE_END);
                let sep = if style == Style::Row {
                    row_sep.to_string()
                } else if after_sentence {
                    // No comma after a full stop: straight on, a space or a line break.
                    [("", 5), (" ", 2), ("\n", 3)].choose_weighted(self.rng, |e| e.1).expect("weights").0.to_string()
                } else {
                    // A 。 straight after a complaint without final punctuation would read as its
                    // own: never there.
                    let no_stop = order[i - 1] == Question;
                    self.separator(half, labelled, no_stop)
                };
                text.push_str(&sep);
            }
            let (labels, english_labels, leadins) = match part {
                Name => (NAME_LABELS, ENGLISH_NAME_LABELS, NAME_LEADINS),
                Address => (ADDRESS_LABELS, ENGLISH_ADDRESS_LABELS, ADDRESS_LEADINS),
                Email => (EMAIL_LABELS, ENGLISH_EMAIL_LABELS, EMAIL_LEADINS),
                Question => (QUESTION_LABELS, ENGLISH_QUESTION_LABELS, QUESTION_LEADINS),
            };
            match style {
                Style::Form => self.label(&mut text, labels, half),
                Style::English => {
                    text.push_str(self.pick(english_labels));
                    text.push_str(english_colon);
                }
                Style::Bracket => {
                    let label = if english_in_brackets { self.pick(english_labels) } else { self.pick(labels) };
                    text.push_str(&bracket.replace("{}", label));
                }
                Style::Row | Style::Letter => {}
                Style::Seed | Style::Free => match part {
                    Name if style == Style::Seed && i == 0 => {}
                    Address if style == Style::Seed => {}
                    Email if style == Style::Seed => text.push_str(if self.chance(0.8) { "邮箱 " } else { "邮箱" }),
                    Question => {
                        if self.chance(0.05) {
                            self.label(&mut text, labels, half);
                        } else if self.chance(0.12) {
                            text.push_str(self.pick(leadins));
                        }
                    }
                    _ => match self.rng.random_range(0..3) {
                        0 => {}
                        1 => self.label(&mut text, labels, half),
                        _ => text.push_str(self.pick(leadins)),
                    },
                },
            }
            match part {
                Name => {
                    text.push_str(&name);
                    let chinese = name.chars().all(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
                    if chinese && matches!(style, Style::Seed | Style::Free) && !honorific_used && self.chance(0.1) {
                        text.push_str(self.pick(&["先生", "女士"]));
                        honorific_used = true;
                    }
                }
                Address => text.push_str(&address),
                Email => text.push_str(&email),
                Question => text.push_str(&question),
            }
        }
        if self.chance(if style == Style::Row { 0.1 } else { 0.4 }) {
            let question_last = order[3] == Question;
            let ends_in_punct = question.ends_with(SENTENCE_END);
            // Junk runs straight on only after the complaint's final punctuation; anywhere else a
            // space, line break or comma keeps it apart from the value before it.
            if !(question_last && ends_in_punct && self.chance(0.7)) {
                let seps: &[&str] = if text.ends_with(SENTENCE_END) { &[" ", "\n", "  "] } else { &[" ", "\n", "，", "  "] };
                text.push_str(self.pick(seps));
            }
            text.push_str(self.pick(JUNK));
        }
        if self.chance(0.03) {
            text.push('\n');
        }
        SynthRecord { text, name, address, email, question, style }
    }

    /// A letter: maybe a salutation, the complaint, the address and email (labelled or led in,
    /// either order), then a sign-off carrying the name.
    fn letter(&mut self, name: &str, address: &str, email: &str, question: &str, half: f64) -> String {
        let mut text = String::new();
        if self.chance(0.8) {
            text.push_str(self.pick(SALUTATIONS));
        }
        text.push_str(question);
        let details: [(&str, &[&str], &[&str]); 2] = [(address, ADDRESS_LABELS, ADDRESS_LEADINS), (email, EMAIL_LABELS, EMAIL_LEADINS)];
        let first = usize::from(self.chance(0.4));
        for (n, (value, labels, leadins)) in [details[first], details[1 - first]].into_iter().enumerate() {
            let sep = if n == 0 && question.ends_with(SENTENCE_END) {
                *[("", 2), ("\n", 5), (" ", 1)].choose_weighted(self.rng, |e| e.1).expect("weights")
            } else {
                *[("\n", 5), ("，", 3), ("；", 1)].choose_weighted(self.rng, |e| e.1).expect("weights")
            };
            text.push_str(sep.0);
            if self.chance(0.5) {
                self.label(&mut text, labels, half);
            } else {
                text.push_str(self.pick(leadins));
            }
            text.push_str(value);
        }
        text.push_str([("\n", 5), ("。\n", 3), ("。", 1), (" ", 1)].choose_weighted(self.rng, |e| e.1).expect("weights").0);
        let date = format!("{}年{}月{}日", self.rng.random_range(2022..2027), self.rng.random_range(1..13), self.rng.random_range(1..29));
        text.push_str(&self.pick(SIGN_OFFS).replace("{name}", name).replace("{date}", &date));
        text
    }

    fn label(&mut self, text: &mut String, labels: &[&str], half: f64) {
        text.push_str(self.pick(labels));
        let colon = self.colon(half);
        text.push_str(colon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn records(seed: u64, n: usize) -> Vec<SynthRecord> {
        Synth::new(seed).take(n).collect()
    }

    #[test]
    fn python_json_matches_json_dumps() {
        // json.dumps({"name": "龙琳", "address": "a\"b\\c\nd\te\u0001", "email": "x@y.z", "question": "好？"},
        //            ensure_ascii=False)
        let got = python_json(&[("name", "龙琳"), ("address", "a\"b\\c\nd\te\u{1}"), ("email", "x@y.z"), ("question", "好？")]);
        assert_eq!(got, r#"{"name": "龙琳", "address": "a\"b\\c\nd\te\u0001", "email": "x@y.z", "question": "好？"}"#);
        assert_eq!(python_json(&[]), "{}");
    }

    #[test]
    fn synth_is_deterministic_per_seed() {
        assert_eq!(records(7, 100), records(7, 100));
        let (a, b) = (records(7, 100), records(8, 100));
        assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 5);
    }

    #[test]
    fn synth_values_are_clean_substrings_and_output_round_trips() {
        let keys = ["name", "address", "email", "question"];
        for (i, rec) in Synth::new(1).take(5000).enumerate() {
            for (key, value) in keys.iter().zip([&rec.name, &rec.address, &rec.email, &rec.question]) {
                assert!(!value.is_empty(), "record {i}: empty {key}: {rec:?}");
                assert!(rec.text.contains(value.as_str()), "record {i}: {key} `{value}` not in `{}`", rec.text);
                assert!(!value.contains(['\n', '\r']), "record {i}: line break in {key}: {value:?}");
                assert_eq!(value.trim(), value.as_str(), "record {i}: {key} not trimmed");
                for label in ["姓名", "地址", "邮箱", "Email", "：", "请问", "投诉内容"] {
                    assert!(!value.starts_with(label), "record {i}: {key} starts with a label: {value}");
                }
            }
            assert!(!rec.question.contains("谢谢"), "{}", rec.question);
            let after = &rec.text[rec.text.find(&rec.question).unwrap() + rec.question.len()..];
            assert!(!after.starts_with(SENTENCE_END), "record {i}: punctuation left after the question: {}", rec.text);
            for stop in ["。，", "！，", "？，", "。；", "。,"] {
                assert!(!rec.text.contains(stop), "record {i}: `{stop}` in {}", rec.text);
            }
            assert!(!rec.name.ends_with("先生") && !rec.name.ends_with("女士"));
            assert_eq!(rec.text.matches('@').count(), 1, "one email: {}", rec.text);

            let out = rec.output();
            let v: serde_json::Value = serde_json::from_str(&out).expect("output is JSON");
            let obj = v.as_object().expect("an object");
            assert_eq!(obj.keys().map(String::as_str).collect::<Vec<_>>(), keys);
            let vals: Vec<&str> = obj.values().map(|v| v.as_str().expect("string")).collect();
            assert_eq!(vals, [&rec.name, &rec.address, &rec.email, &rec.question]);
            let pairs: Vec<(&str, &str)> = keys.iter().copied().zip(vals).collect();
            assert_eq!(python_json(&pairs), out);

            let sft = rec.to_sft();
            assert_eq!(sft.user_message(), rec.text);
            assert_eq!(sft.system.as_deref(), Some(Schema::default().system_prompt().as_str()));
        }
    }

    #[test]
    fn synth_covers_its_variations() {
        let recs = records(3, 2000);
        let mut orders: HashMap<Vec<usize>, usize> = HashMap::new();
        let count = |pred: &dyn Fn(&SynthRecord) -> bool| recs.iter().filter(|r| pred(r)).count();
        let compound = count(&|r| COMPOUND_SURNAMES.iter().any(|s| r.name.starts_with(s)));
        let latin = count(&|r| r.name.is_ascii());
        let two_given = count(&|r| !r.name.is_ascii() && r.name.chars().count() == 3);
        let postcode = count(&|r| r.address.chars().rev().take(6).all(|c| c.is_ascii_digit()));
        let newline = count(&|r| r.text.trim().contains('\n'));
        let half_colon = count(&|r| r.text.contains(':'));
        let full_colon = count(&|r| r.text.contains('：'));
        let greeting = count(&|r| GREETINGS.iter().any(|g| r.text.trim_start().starts_with(g)));
        let junk = count(&|r| JUNK.iter().any(|j| r.text.trim_end().ends_with(j)));
        let junk_after_q = count(&|r| {
            let end = r.text.find(&r.question).unwrap() + r.question.len();
            !r.text[end..].trim().is_empty() && !r.text[end..].contains('@') && !r.text[end..].contains(&r.name)
        });
        let no_end_punct = count(&|r| !r.question.ends_with(SENTENCE_END));
        let inner_stop = count(&|r| r.question.trim_end_matches('。').contains('。'));
        for (label, min) in [
            ("姓名", 20), ("联系人", 10), ("我是", 40), ("本人", 20), ("地址", 40), ("住在", 20), ("家住", 10),
            ("邮箱 ", 100), ("Email", 10), ("电子邮件", 10), ("请回复到", 10), ("我的邮箱是", 10), ("投诉内容", 10),
            ("先生", 10), ("女士", 10), ("请问", 5), ("[图片]", 5), ("😡", 10), ("~~~", 5), ("asdf", 5),
        ] {
            let n = count(&|r| r.text.contains(label));
            assert!(n >= min, "`{label}` occurs in {n} texts, expected at least {min}");
        }
        for r in &recs {
            let mut pos: Vec<(usize, usize)> = [&r.name, &r.address, &r.email, &r.question]
                .iter()
                .enumerate()
                .map(|(i, v)| (r.text.find(v.as_str()).unwrap(), i))
                .collect();
            pos.sort();
            *orders.entry(pos.iter().map(|p| p.1).collect()).or_default() += 1;
        }
        let question_first = orders.iter().filter(|(o, _)| o[0] == 3).map(|(_, n)| n).sum::<usize>();
        let name_first = orders.iter().filter(|(o, _)| o[0] == 0).map(|(_, n)| n).sum::<usize>();
        println!(
            "orders {} (question first {question_first}, name first {name_first}), compound {compound}, latin {latin}, \
             two-char given {two_given}, postcode {postcode}, newline {newline}, greeting {greeting}, junk {junk} \
             ({junk_after_q} right after the question), no end punct {no_end_punct}, inner 。 {inner_stop}",
            orders.len()
        );
        assert!(orders.len() >= 12, "{orders:?}");
        assert!((150..500).contains(&question_first));
        assert!(name_first > 1200 && name_first < 1800);
        assert!((80..300).contains(&compound));
        assert!((80..300).contains(&latin));
        assert!((350..900).contains(&two_given));
        assert!((500..1100).contains(&postcode));
        assert!(newline > 200 && half_colon > 100 && full_colon > 200 && greeting > 300 && junk > 500);
        assert!(junk_after_q > 300 && no_end_punct > 100 && inner_stop > 100);
        let lens: Vec<usize> = recs.iter().map(|r| r.text.chars().count()).collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        println!("text length: mean {mean:.1}, min {}, max {}", lens.iter().min().unwrap(), lens.iter().max().unwrap());
        assert!((45.0..=110.0).contains(&mean), "mean text length {mean}");
        let distinct: HashSet<&str> = recs.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(distinct.len(), recs.len());
    }

    /// `with_styles` draws only the styles asked for (the quickstart's held-out styles are never
    /// trained on), and each style shows its marks: a letter's name comes after its complaint in
    /// the sign-off, English labels, brackets, rows without labels.
    #[test]
    fn each_style_is_drawn_alone_and_shows_its_marks() {
        for style in Style::ALL {
            assert_eq!(Style::parse(style.name()), Ok(style));
            let recs: Vec<SynthRecord> = Synth::with_styles(9, &[style]).take(300).collect();
            assert!(recs.iter().all(|r| r.style == style));
            let share = |pred: &dyn Fn(&SynthRecord) -> bool| recs.iter().filter(|r| pred(r)).count() as f64 / recs.len() as f64;
            let at = |r: &SynthRecord, v: &str| r.text.rfind(v).unwrap();
            let share = match style {
                Style::Letter => share(&|r| at(r, &r.name) > at(r, &r.question) && at(r, &r.name) > at(r, &r.email)),
                Style::English => share(&|r| ENGLISH_EMAIL_LABELS.iter().any(|l| r.text.contains(l))),
                Style::Bracket => share(&|r| BRACKETS.iter().any(|b| NAME_LABELS.iter().chain(ENGLISH_NAME_LABELS).any(|l| r.text.contains(&b.replace("{}", l))))),
                Style::Row => share(&|r| !NAME_LABELS.iter().chain(EMAIL_LABELS).chain(ENGLISH_EMAIL_LABELS).any(|l| r.text.contains(l))),
                Style::Form => share(&|r| EMAIL_LABELS.iter().any(|l| r.text.contains(l))),
                Style::Seed => share(&|r| r.text.contains("邮箱")),
                Style::Free => 1.0,
            };
            assert!(share > 0.97, "{style:?}: {share}");
        }
        assert!(Style::parse("tabs").unwrap_err().contains("seed, form, free, letter, english, bracket, row"));
        assert_eq!(Style::parse_list(" row, letter"), Ok(vec![Style::Row, Style::Letter]));
        assert_eq!(Style::parse_list("none"), Ok(vec![]));
        assert_eq!(Style::parse_list("all"), Ok(Style::ALL.to_vec()));
        assert!(Style::parse_list("row,,letter").is_err());
        assert!(Style::parse_list(" ").is_err());
        let mixed: Vec<SynthRecord> = Synth::with_styles(9, &Style::HELD_OUT).take(200).collect();
        assert!(Style::HELD_OUT.iter().all(|s| mixed.iter().any(|r| r.style == *s)));
        assert!(mixed.iter().all(|r| Style::HELD_OUT.contains(&r.style)));
        let rural = Synth::new(4).take(1000).filter(|r| r.address.contains('村')).count();
        let scripts = Synth::new(4).take(1000).filter(|r| r.name.contains('·') || r.name.chars().any(|c| ('\u{ac00}'..='\u{d7a3}').contains(&c) || ('\u{3040}'..='\u{309f}').contains(&c))).count();
        let ellipsis = Synth::new(4).take(1000).filter(|r| r.question.ends_with('…')).count();
        assert!(rural > 80 && scripts > 10 && ellipsis > 30, "rural {rural}, other scripts {scripts}, ellipsis {ellipsis}");
    }

    #[test]
    fn synth_records_fit_the_qwen3_token_budget() {
        let tok = crate::tokenizer::tests::qwen3();
        let lens: Vec<usize> = Synth::new(5)
            .take(500)
            .map(|r| crate::sft::Example::new(&r.to_sft(), &tok).unwrap().len())
            .collect();
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
        let empty = SynthRecord { text: String::new(), name: String::new(), address: String::new(), email: String::new(), question: String::new(), style: Style::Seed };
        let fixed = crate::sft::Example::new(&empty.to_sft(), &tok).unwrap().len();
        println!("tokens per record (prompt + output): mean {mean:.1}, min {min}, max {max}; {fixed} of them \
                  are system prompt, chat template and JSON keys");
        assert!((60.0..=220.0).contains(&mean), "mean {mean}");
    }

    #[test]
    #[ignore = "prints samples"]
    fn synth_print_samples() {
        for r in Synth::new(42).take(8) {
            println!("{}\n{}\n", serde_json::to_string(&r.text).unwrap(), r.output());
        }
    }
}
